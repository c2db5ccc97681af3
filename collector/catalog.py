"""What the collector does with the event catalog: JSON Schema checks and PII hashing.

The file's format is the spine's (:mod:`tripwire.catalog`, ``examples/catalog.json``);
this module compiles each entry's ``schema`` once, at start (fastjsonschema), and
replaces the values at each ``pii`` path by a salted SHA-256 (hex) of the value
(strings are trimmed and lower-cased first, so ``Ann@X.com`` and ``ann@x.com``
hash alike). PII is hashed whether or not the event is valid, so the invalid
topic holds no clear-text PII either.

``check`` returns ``None`` for a valid event, or a :class:`Violation` naming the
reason (``unknown_event`` in strict mode, ``schema``), the field and a message;
the collector then writes the event to the invalid topic.
"""

from __future__ import annotations

import hashlib
import logging
import os
import secrets
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import fastjsonschema
import orjson

from tripwire.catalog import CatalogEntry
from tripwire.catalog import CatalogError as FileError
from tripwire.catalog import load_catalog

from .errors import CatalogError

logger = logging.getLogger(__name__)


@dataclass(frozen=True, slots=True)
class Violation:
    reason: str  # "unknown_event" | "schema"
    field: str
    message: str


@dataclass(frozen=True)
class _Spec:
    validate: Callable[[Any], Any] | None
    pii: tuple[tuple[str, ...], ...]


class Catalog:
    def __init__(self, events: Mapping[str, _Spec], traits: _Spec | None, *, strict: bool, salt: bytes) -> None:
        self._events = dict(events)
        self._traits = traits
        self.strict = strict
        self._salt = salt

    @property
    def event_names(self) -> list[str]:
        return sorted(self._events)

    @classmethod
    def load(cls, path: Path, *, strict: bool, salt: bytes) -> Catalog:
        try:
            catalog = load_catalog(path)
        except FileError as exc:
            raise CatalogError(str(exc)) from None
        events = {name: _spec(path, entry) for name, entry in catalog.events.items()}
        traits = _spec(path, catalog.traits) if catalog.traits is not None else None
        return cls(events, traits, strict=strict, salt=salt)

    def hash_value(self, value: Any) -> str:
        text = value.strip().lower() if isinstance(value, str) else orjson.dumps(value).decode()
        return hashlib.sha256(self._salt + text.encode("utf-8", "surrogatepass")).hexdigest()

    def check(self, env: dict[str, Any]) -> Violation | None:
        """Validate a normalised envelope and hash its PII in place."""
        kind = env["type"]
        if kind == "track":
            spec = self._events.get(env["event"])
            if spec is None:
                if self.strict:
                    return Violation("unknown_event", "event", f"event {env['event'][:100]!r} is not in the catalog")
                return None
            return self._apply(spec, env, "properties")
        if kind == "identify" and self._traits is not None:
            return self._apply(self._traits, env, "traits")
        return None

    def _apply(self, spec: _Spec, env: dict[str, Any], field: str) -> Violation | None:
        value = env.get(field)
        if value is None:
            value = {}
        violation = None
        if spec.validate is not None:
            try:
                spec.validate(value)
            except fastjsonschema.JsonSchemaValueException as exc:
                where = field + (exc.name[4:] if exc.name and exc.name.startswith("data") else "")
                message = exc.message.replace("data", field, 1) if exc.message.startswith("data") else exc.message
                violation = Violation("schema", where, message)
        if spec.pii and env.get(field):
            env[field] = self._hash_paths(env[field], spec.pii)
        return violation

    def _hash_paths(self, obj: dict[str, Any], paths: tuple[tuple[str, ...], ...]) -> dict[str, Any]:
        out = dict(obj)
        for path in paths:
            node = out
            for i, part in enumerate(path):
                if not isinstance(node, dict) or part not in node:
                    break
                if i == len(path) - 1:
                    if node[part] is not None:
                        node[part] = self.hash_value(node[part])
                else:
                    if not isinstance(node[part], dict):
                        break
                    node[part] = dict(node[part])  # copy on write: never mutate the caller's dicts
                    node = node[part]
        return out


def _spec(path: Path, entry: CatalogEntry) -> _Spec:
    validate = None
    if entry.schema is not None:
        try:
            validate = fastjsonschema.compile(entry.schema)
        except Exception as exc:  # fastjsonschema raises its own error, but also re.error, TypeError, ...
            raise CatalogError(
                f"event catalog '{path}': '{entry.where}.schema' is not a valid JSON Schema: {exc}"
            ) from None
    return _Spec(validate, tuple(tuple(p.split(".")) for p in entry.pii))


def resolve_salt(configured: str, data_dir: Path) -> bytes:
    """The configured salt, else one generated on first use and kept in ``data_dir``.

    Several collectors writing to one Kafka cluster must share a salt: configure it.
    """
    if configured:
        return configured.encode()
    path = data_dir / "pii-salt"
    try:
        return path.read_bytes().strip()
    except FileNotFoundError:
        pass
    data_dir.mkdir(parents=True, exist_ok=True)
    salt = secrets.token_hex(32).encode()
    # Write aside, then link into place: a concurrent worker sees no file or a whole one.
    tmp = data_dir / f".pii-salt.{os.getpid()}.{secrets.token_hex(4)}"
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    with os.fdopen(fd, "wb") as f:
        f.write(salt)
        f.flush()
        os.fsync(f.fileno())
    try:
        os.link(tmp, path)
    except FileExistsError:  # another worker won the race
        return path.read_bytes().strip()
    finally:
        tmp.unlink()
    logger.warning("no collector.pii_salt configured; generated one in %s (set it when running several collectors)", path)
    return salt

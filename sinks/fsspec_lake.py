"""The lake on S3 (s3fs), or on any fsspec filesystem with whole-object writes (``memory://`` in unit tests).

See :mod:`sinks.lake` for the guarantees. Here: ``write`` is one PUT (or a
multipart upload s3fs aborts on error); ``swap`` PUTs the new objects and then
deletes the old ones in one DeleteObjects call (not atomic for readers);
``update`` is a conditional PUT (``If-Match`` the ETag of the bytes read,
``If-None-Match: *`` to create), read again and retried when another writer
came first.
"""

from __future__ import annotations

import contextlib
import logging
import threading
from collections.abc import Callable, Mapping, Sequence
from typing import Any

from .errors import LakeError
from .lake import Lake

logger = logging.getLogger(__name__)

_UPDATE_ATTEMPTS = 20
_MEMORY_UPDATES = threading.Lock()


class FsspecLake(Lake):
    """S3 (s3fs) or any fsspec filesystem with whole-object writes (``memory://`` for unit tests)."""

    def __init__(self, url: str, storage_options: Mapping[str, Any] | None = None) -> None:
        import fsspec

        self.url = url.rstrip("/")
        protocol, _, rest = self.url.partition("://")
        opts = dict(storage_options or {})
        if protocol == "s3":
            opts.setdefault("use_listings_cache", False)
            opts.setdefault("skip_instance_cache", True)
        self.fs = fsspec.filesystem(protocol, **opts)
        self._root = rest
        self._s3 = protocol == "s3"

    def _p(self, path: str) -> str:
        return f"{self._root}/{path}" if path else self._root

    def write(self, path: str, data: bytes) -> None:
        try:
            self.fs.pipe_file(self._p(path), data)  # one PUT, or multipart aborted on error
        except Exception as exc:
            raise LakeError(f"cannot write {self.full(path)}: {exc}") from exc

    def read(self, path: str) -> bytes | None:
        try:
            return bytes(self.fs.cat_file(self._p(path)))
        except FileNotFoundError:
            return None
        except Exception as exc:
            raise LakeError(f"cannot read {self.full(path)}: {exc}") from exc

    def exists(self, path: str) -> bool:
        try:
            self.fs.invalidate_cache(self._p(path))
            return bool(self.fs.exists(self._p(path)))
        except Exception as exc:
            raise LakeError(f"cannot stat {self.full(path)}: {exc}") from exc

    def list(self, under: str = "", suffix: str = "") -> list[str]:
        return sorted(self.sizes(under, suffix))

    def sizes(self, under: str = "", suffix: str = "") -> dict[str, int]:
        base = self._p(under)
        try:
            self.fs.invalidate_cache()
            found = self.fs.find(base, detail=True)
        except FileNotFoundError:
            return {}
        except Exception as exc:
            raise LakeError(f"cannot list {self.full(under)}: {exc}") from exc
        out = {}
        root = self._root.strip("/")
        for p, info in found.items():
            rel = p.strip("/")[len(root) :].lstrip("/") if root else p.strip("/")
            name = rel.rsplit("/", 1)[-1]
            if rel.endswith(suffix) and not name.startswith(".") and info.get("type") != "directory":
                out[rel] = int(info.get("size") or 0)
        return out

    def delete(self, paths: Sequence[str]) -> None:
        if not paths:
            return
        try:
            self.fs.rm([self._p(p) for p in paths])
        except FileNotFoundError:
            for p in paths:
                with contextlib.suppress(FileNotFoundError):
                    self.fs.rm(self._p(p))
        except Exception as exc:
            raise LakeError(f"cannot delete {len(paths)} file(s) under {self.url}: {exc}") from exc

    def update(self, path: str, change: Callable[[bytes | None], bytes | None]) -> bytes | None:
        if not self._s3:
            with _MEMORY_UPDATES:  # memory:// (unit tests): one process, a lock is enough
                current = self.read(path)
                new = change(current)
                if new is not None:
                    self.write(path, new)
                    return new
                return current
        for _ in range(_UPDATE_ATTEMPTS):
            current, etag = self._read_tagged(path)
            new = change(current)
            if new is None:
                return current
            if self._put_if(path, new, etag):
                return new
            logger.debug("%s changed while being updated; reading it again", self.full(path))
        raise LakeError(f"cannot update {self.full(path)}: {_UPDATE_ATTEMPTS} other writers came first")

    def _read_tagged(self, path: str) -> tuple[bytes | None, str | None]:
        """The bytes of ``path`` and the ETag of exactly those bytes (None, None when it does not exist)."""
        for _ in range(_UPDATE_ATTEMPTS):
            try:
                before = self.fs.info(self._p(path), refresh=True).get("ETag")
                data = bytes(self.fs.cat_file(self._p(path)))
                after = self.fs.info(self._p(path), refresh=True).get("ETag")
            except FileNotFoundError:
                return None, None
            except Exception as exc:
                raise LakeError(f"cannot read {self.full(path)}: {exc}") from exc
            if before == after:
                return data, before
        raise LakeError(f"cannot read {self.full(path)}: it keeps changing")

    def _put_if(self, path: str, data: bytes, etag: str | None) -> bool:
        """PUT ``data`` unless ``path`` changed since ``etag`` was read (or exists, for None)."""
        bucket, key, _ = self.fs.split_path(self._p(path))
        condition = {"IfMatch": etag} if etag is not None else {"IfNoneMatch": "*"}
        try:
            self.fs.call_s3("put_object", Bucket=bucket, Key=key, Body=data, **condition)
        except Exception as exc:
            if _precondition_failed(exc):
                return False
            raise LakeError(f"cannot write {self.full(path)}: {exc}") from exc
        self.fs.invalidate_cache(self._p(path))
        return True

    def swap(self, directory: str, puts: Mapping[str, bytes], deletes: Sequence[str]) -> None:
        for name, data in puts.items():
            self.write(f"{directory}/{name}", data)
        self.delete([f"{directory}/{n}" for n in deletes if n not in puts])


def _precondition_failed(error: BaseException) -> bool:
    """S3 refused a conditional PUT: 412 (the object changed) or 409 (a concurrent conditional write)."""
    seen: set[int] = set()
    exc: BaseException | None = error
    while exc is not None and id(exc) not in seen:
        seen.add(id(exc))
        response = getattr(exc, "response", None)
        if isinstance(response, dict):
            code = str(response.get("Error", {}).get("Code", ""))
            status = response.get("ResponseMetadata", {}).get("HTTPStatusCode")
            if code in ("PreconditionFailed", "ConditionalRequestConflict") or status in (409, 412):
                return True
        text = str(exc)
        if "PreconditionFailed" in text or "ConditionalRequestConflict" in text or "(412)" in text:
            return True
        exc = exc.__cause__ or exc.__context__
    return False

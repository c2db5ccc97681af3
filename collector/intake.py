"""The intake pipeline every endpoint shares: write key, envelope, enrichment, catalog, append.

``prepare`` turns parsed events into log entries (or raises a 4xx
:class:`CollectorError` naming the event and field: a request is all or
nothing, so an SDK never has half a batch acknowledged); ``write`` appends them
and returns only once the log says they are durable.

Events that carry a userId are keyed by identity links before the append
(:mod:`collector.identity`), and the links they teach are appended with them.

An event the collector acknowledges but will not pass on (it breaks its catalog
schema, or it is older than ``max_age_days`` from a source that is not
``historical``) goes to the invalid topic with the reason.
"""

from __future__ import annotations

import asyncio
import base64
import binascii
import time
from collections.abc import Mapping, Sequence
from typing import Any

import orjson

from tripwire.envelope import EnvelopeError, format_time_ms, log_key, normalize_timed
from tripwire.identity import Link
from tripwire.log import EVENTS, INVALID, EventLog

from . import metrics
from .catalog import Catalog, Violation
from .config import OPEN_SOURCE_NAME, SourceConfig
from .enrich import IpPolicy
from .errors import CollectorError, too_large
from .identity import Noted, key_by_links, trust_of
from .nesting import MAX_DEPTH, Serialiser, too_deep_field

Entry = tuple[bytes, bytes]
_DAY_MS = 86_400_000
_OPEN_SOURCE = SourceConfig("", ["*"], OPEN_SOURCE_NAME)


class Intake:
    def __init__(
        self,
        log: EventLog,
        sources: Mapping[str, SourceConfig],
        *,
        catalog: Catalog | None,
        ip_policy: IpPolicy,
        max_event_bytes: int,
        max_future_s: int = 10,
        max_age_days: int = 30,
    ) -> None:
        self.log = log
        self.sources = dict(sources)
        self.open_mode = not self.sources
        self.catalog = catalog
        self.ip_policy = ip_policy
        self.max_event_bytes = max_event_bytes
        self.max_future_ms = max_future_s * 1000
        self.max_age_ms = max_age_days * _DAY_MS  # 0: no bound
        self._serialiser = Serialiser()
        self._basic_cache: dict[bytes, str | None] = {}

    # write key -----------------------------------------------------------------

    def write_key_from_auth(self, authorization: bytes | None) -> str | None:
        """The HTTP Basic username (Segment's SDKs send ``writeKey:`` base64-encoded)."""
        if authorization is None:
            return None
        cached = self._basic_cache.get(authorization)
        if cached is not None:
            return cached
        scheme, _, token = authorization.partition(b" ")
        if scheme.lower() != b"basic" or not token.strip():
            raise CollectorError(401, "invalid_authorization", "Authorization must be HTTP Basic with the write key as user name", field="Authorization")
        try:
            user = base64.b64decode(token.strip(), validate=True).decode("utf-8").partition(":")[0]
        except (binascii.Error, ValueError):
            raise CollectorError(401, "invalid_authorization", "Authorization Basic credentials are not valid base64 of 'writeKey:'", field="Authorization") from None
        if len(self._basic_cache) < 1024:
            self._basic_cache[authorization] = user
        return user

    def source_for(self, write_key: Any) -> SourceConfig:
        if self.open_mode:
            return _OPEN_SOURCE
        if write_key is None or write_key == "":
            raise CollectorError(401, "missing_write_key", "no write key: send it as the HTTP Basic user name or as writeKey in the body", field="writeKey")
        source = self.sources.get(write_key) if isinstance(write_key, str) else None
        if source is None:
            raise CollectorError(401, "unknown_write_key", "the write key is not known to this collector", field="writeKey")
        return source

    # events ------------------------------------------------------------------

    def prepare(
        self,
        raws: Sequence[Any],
        *,
        source: str,
        default_type: str | None,
        client_ip: str | None,
        user_agent: str | None,
        library: dict[str, str],
        batch: Mapping[str, Any] | None = None,
        historical: bool = False,
        trusted: bool = False,
        identity_secret: bytes | None = None,
    ) -> Prepared:
        """The request's log entries, ready for :meth:`write`.

        Events are normalised in place (``raws`` belong to the request). What every
        event of the request shares (receive time, peer, batch fields) is worked out
        once, before the loop. ``historical`` (the source's ``historical = true``)
        lifts the bound on event age. ``trusted`` (a server-side source) and
        ``identity_secret`` say how far the source vouches for the userIds it sends
        (:mod:`collector.identity`).
        """
        received_ms = int(time.time() * 1000)
        received_at = format_time_ms(received_ms)
        latest_ms = received_ms + self.max_future_ms
        oldest_ms = received_ms - self.max_age_ms if self.max_age_ms and not historical else None
        anonymize = self.ip_policy.anonymize
        anonymized_peer = anonymize(client_ip) if client_ip else None
        batch_sent_at = batch_context = batch_integrations = None
        if batch is not None:
            batch_sent_at = batch.get("sentAt")
            batch_context = batch.get("context")
            batch_integrations = batch.get("integrations")
            if batch_context is not None and not isinstance(batch_context, dict):
                raise CollectorError(400, "invalid_event", "context must be a JSON object", field="context")
            if batch_integrations is not None and not isinstance(batch_integrations, dict):
                raise CollectorError(400, "invalid_event", "integrations must be a JSON object", field="integrations")
        out = Prepared(source, received_ms)
        valid, times, add_delay, noted = out.valid, out.times, out.delays_ms.append, out.noted
        catalog = self.catalog
        max_event_bytes = self.max_event_bytes if batch is not None else None
        dumps = orjson.dumps
        # The Serialiser inline (see nesting.py): orjson itself refuses values nested past MAX_DEPTH.
        outer, inner, wrap = self._serialiser.outer, self._serialiser.inner, self._serialiser.wrap
        end = -wrap
        for i, raw in enumerate(raws):
            if type(raw) is not dict and not isinstance(raw, dict):
                where = f"batch[{i}]" if batch is not None else "body"
                raise CollectorError(400, "invalid_event", f"{where}: must be a JSON object", field=where)
            if "writeKey" in raw:
                del raw["writeKey"]  # a secret: never stored
            if batch is not None:
                # Batch-level sentAt, context and integrations apply to every event (Segment's batch format).
                if batch_sent_at is not None and "sentAt" not in raw:
                    raw["sentAt"] = batch_sent_at
                if batch_context:
                    own = raw.get("context")
                    if own is None:
                        raw["context"] = dict(batch_context)
                    elif isinstance(own, dict):
                        raw["context"] = {**batch_context, **own}  # the event's own keys win
                if batch_integrations and "integrations" not in raw:
                    raw["integrations"] = batch_integrations
            try:
                env, event_ms = normalize_timed(raw, received_at_ms=received_ms, source=source,
                                                default_type=default_type, received_at=received_at, in_place=True)
            except EnvelopeError as exc:
                where = f"batch[{i}]." if batch is not None else ""
                raise CollectorError(400, "invalid_event", f"{where}{exc.field}: {exc.message}", field=where + exc.field) from None
            if event_ms > latest_ms:
                env["timestamp"] = received_at  # an event cannot happen after it arrived
                event_ms = received_ms
                metrics.EVENTS_FUTURE.inc()
            add_delay(received_ms - event_ms)
            ctx = env.get("context")
            if ctx is None:
                ctx = env["context"] = {}
            ip = ctx.get("ip")
            if ip is not None:
                ip = anonymize(ip) if isinstance(ip, str) else None
            ctx["ip"] = ip if ip is not None else anonymized_peer
            if user_agent is not None and "userAgent" not in ctx:
                ctx["userAgent"] = user_agent
            if "library" not in ctx:
                ctx["library"] = library
            claimed_hash = ctx.pop("userHash", None)  # a credential for the userId: checked, never stored
            inner[0] = env
            try:
                value = dumps(outer)[wrap:end]
            except orjson.JSONEncodeError:
                value = None
            inner[0] = None  # keep no request's event alive
            if value is None:
                raise self._nesting_error(env, f"batch[{i}]." if batch is not None else "")
            violation = None
            if catalog is not None:
                violation = catalog.check(env)  # hashes PII in place, valid or not
                value = dumps(env)
            if oldest_ms is not None and event_ms < oldest_ms:
                violation = Violation(
                    "timestamp_too_old", "timestamp",
                    f"event time {env['timestamp']} is more than collector.max_age_days={self.max_age_ms // _DAY_MS} "
                    "days before receivedAt; send history from a source with historical = true",
                )
            if max_event_bytes is not None and len(value) > max_event_bytes:
                raise too_large("max_event_bytes", max_event_bytes, f"batch[{i}]")
            key = log_key(env).encode()
            if violation is None:
                user_id = env.get("userId")
                if user_id is not None:
                    trust, may_link = trust_of(user_id, claimed_hash, trusted_source=trusted, secret=identity_secret)
                    noted.append(Noted(len(valid), user_id, env.get("anonymousId"),
                                       env.get("previousId") if env["type"] == "alias" else None, trust, may_link))
                valid.append((key, value))
                times.append(event_ms)
            else:
                out.refuse(key, value, env, violation)
        return out

    @staticmethod
    def _nesting_error(env: dict[str, Any], prefix: str) -> CollectorError:
        deep = too_deep_field(env)
        if deep is not None:
            return CollectorError(
                400, "invalid_event", f"{prefix}{deep} nests deeper than max_nesting_depth={MAX_DEPTH} levels",
                field=prefix + deep, limit="max_nesting_depth",
            )
        # Parsed JSON within the limit always serialises: a bug, still answered clearly and not with a 500.
        return CollectorError(400, "invalid_event", f"{prefix or 'the event '}cannot be stored as JSON",
                              field=prefix.rstrip(".") or "body")

    async def write(self, prepared: Prepared) -> None:
        """Append both topics; returns once everything is durable (raises LogError otherwise).

        The events topic gets the request's events in event-time order (stable), so one
        key's events are read in the order they happened, whatever order a device's
        queue or an SDK's batch sent them in.
        """
        links: Sequence[Link] = ()
        if prepared.noted:
            links = await key_by_links(self.log, prepared.valid, prepared.times, prepared.noted,
                                       source=prepared.source, received_ms=prepared.received_ms)
        valid, invalid, reasons = prepared.in_time_order(), prepared.invalid, prepared.reasons
        start = time.perf_counter()
        if invalid and valid:
            await asyncio.gather(self.log.append(EVENTS, valid, links), self.log.append(INVALID, invalid))
        elif valid:
            await self.log.append(EVENTS, valid, links)
        elif invalid:
            await self.log.append(INVALID, invalid)
        elapsed = time.perf_counter() - start
        if valid:
            metrics.APPEND_EVENTS.observe(elapsed)
            metrics.EVENTS_ACCEPTED.inc(len(valid))
        if invalid:
            metrics.APPEND_INVALID.observe(elapsed)
            for reason in reasons:
                metrics.EVENTS_INVALID.labels(reason).inc()
        metrics.EVENT_DELAY.add(prepared.source, prepared.delays_ms)


class Prepared:
    """One request's entries: valid ones (with their event times), invalid ones, and delays."""

    __slots__ = ("source", "received_ms", "valid", "times", "invalid", "reasons", "delays_ms", "noted")

    def __init__(self, source: str, received_ms: int = 0) -> None:
        self.source = source
        self.received_ms = received_ms
        self.valid: list[Entry] = []
        self.times: list[int] = []  # event time (ms) of each valid entry
        self.invalid: list[Entry] = []
        self.reasons: list[str] = []
        self.delays_ms: list[int] = []  # receivedAt - event time of every event, valid or not
        self.noted: list[Noted] = []  # valid events that carry a userId (collector.identity)

    def refuse(self, key: bytes, value: bytes, env: dict[str, Any], violation: Violation) -> None:
        self.reasons.append(violation.reason)
        record = {
            "reason": violation.reason,
            "field": violation.field,
            "message": violation.message,
            "messageId": env["messageId"],
            "source": self.source,
            "receivedAt": env["receivedAt"],
            "event": orjson.Fragment(value),
        }
        self.invalid.append((key, orjson.dumps(record)))

    def in_time_order(self) -> list[Entry]:
        """The valid entries, stably sorted by event time (as they are when already in order)."""
        times = self.times
        if times == sorted(times):
            return self.valid
        valid = self.valid
        return [valid[i] for i in sorted(range(len(times)), key=times.__getitem__)]

"""One delivery attempt: sign the stored body afresh, POST it, classify the answer.

Outcomes: ``success`` (2xx), ``gone`` (410: disable the endpoint), ``throttled``
(429/503, with the Retry-After seconds when given), ``redirect`` (3xx: a
failure, never followed), ``http_error`` (any other status), ``timeout``
(the whole attempt exceeded its budget), ``network`` (connect/read errors),
``refused`` (SSRF guard).

:class:`Sender` prepares once per endpoint what every attempt shares (the
decoded keys, the URL, the fixed headers); an attempt only adds the
``webhook-*`` headers and the signature of ``"{id}.{timestamp}.{body}"``.
"""

from __future__ import annotations

import asyncio
import base64
import email.utils
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass

import httpcore
import httpx

from .errors import DestinationRefused
from .signing import signature
from .transport import EndpointPool

USER_AGENT = "tripwire-webhooks/1"
_RESERVED = {"webhook-id", "webhook-timestamp", "webhook-signature", "content-type", "content-length", "host"}


@dataclass(frozen=True)
class Result:
    outcome: str
    status: int | None = None
    retry_after_s: float | None = None
    error: str | None = None  # short, for the operator; never a secret or a URL
    duration_s: float = 0.0

    @property
    def ok(self) -> bool:
        return self.outcome == "success"


def fixed_headers(extra: Mapping[str, str]) -> dict[str, str]:
    """An endpoint's own headers (never the reserved ones), the user agent and the content type."""
    headers = {k: v for k, v in extra.items() if k.lower() not in _RESERVED}
    if not any(k.lower() == "user-agent" for k in headers):
        headers["user-agent"] = USER_AGENT
    headers["content-type"] = "application/json"
    return headers


def parse_retry_after(value: str | None) -> float | None:
    if not value:
        return None
    value = value.strip()
    if value.isdigit():
        return float(value)
    try:
        when = email.utils.parsedate_to_datetime(value)
    except (TypeError, ValueError):
        return None
    return max(0.0, when.timestamp() - time.time())


class Sender:
    """Attempts to one endpoint over its :class:`~tripwire.webhooks.transport.EndpointPool`."""

    def __init__(
        self, pool: EndpointPool, url: str, keys: Sequence[bytes], extra_headers: Mapping[str, str], *,
        timeout_s: float, max_response_bytes: int = 4096,
    ) -> None:
        parsed = httpx.URL(url)
        self.pool = pool
        self._url = httpcore.URL(scheme=parsed.raw_scheme, host=parsed.raw_host, port=parsed.port,
                                 target=parsed.raw_path)
        self._keys = list(keys)
        self._timeout_s = timeout_s
        self._max_response_bytes = max_response_bytes
        fixed = [(b"host", parsed.netloc)]
        if parsed.userinfo:  # as httpx would: credentials in the URL become basic auth
            credentials = f"{parsed.username}:{parsed.password}".encode()
            fixed.append((b"authorization", b"Basic " + base64.b64encode(credentials)))
        fixed += [(k.encode(), v.encode()) for k, v in fixed_headers(extra_headers).items()]
        self._fixed = fixed
        self._ts = 0
        self._ts_bytes = b""

    def headers(self, msg_id: bytes, body: bytes) -> list[tuple[bytes, bytes]]:
        now = int(time.time())
        if now != self._ts:
            self._ts, self._ts_bytes = now, str(now).encode()
        return [
            *self._fixed,
            (b"content-length", b"%d" % len(body)),
            (b"webhook-id", msg_id),
            (b"webhook-timestamp", self._ts_bytes),
            (b"webhook-signature", signature(self._keys, msg_id, self._ts_bytes, body)),
        ]

    async def send(self, msg_id: str, body: bytes) -> Result:
        started = time.monotonic()
        headers = self.headers(msg_id.encode(), body)
        timeout_s = self._timeout_s
        try:
            # httpcore's timeouts are per operation (a receiver dripping bytes resets the read
            # timeout); the outer deadline bounds the whole attempt.
            async with asyncio.timeout(timeout_s):
                status, answer_headers, answer = await self.pool.post(
                    self._url, headers, body, timeout_s=timeout_s, max_response_bytes=self._max_response_bytes,
                )
        except DestinationRefused as exc:
            return Result("refused", error=f"refused: {exc.reason} address", duration_s=time.monotonic() - started)
        except (TimeoutError, httpcore.TimeoutException):
            return Result("timeout", error=f"timed out after {timeout_s:g}s", duration_s=time.monotonic() - started)
        except (httpcore.NetworkError, httpcore.ProtocolError, httpcore.UnsupportedProtocol, OSError) as exc:
            return Result("network", error=f"{type(exc).__name__}: {exc}"[:200], duration_s=time.monotonic() - started)
        duration = time.monotonic() - started
        if 200 <= status < 300:
            return Result("success", status, duration_s=duration)
        text = " ".join(answer.decode("utf-8", "replace").split())[:200]
        error = f"HTTP {status}" + (f": {text}" if text else "")
        if status == 410:
            return Result("gone", status, error=error, duration_s=duration)
        if status in (429, 503):
            return Result("throttled", status, _retry_after(answer_headers), error, duration)
        if 300 <= status < 400:
            return Result("redirect", status, error=f"HTTP {status}: redirects are not followed", duration_s=duration)
        return Result("http_error", status, error=error, duration_s=duration)

    async def aclose(self) -> None:
        await self.pool.aclose()


def _retry_after(headers: Sequence[tuple[bytes, bytes]]) -> float | None:
    for name, value in headers:
        if name.lower() == b"retry-after":
            return parse_retry_after(value.decode("latin-1"))
    return None

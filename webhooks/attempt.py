"""One delivery attempt: sign the stored body afresh, POST it, classify the answer.

Outcomes: ``success`` (2xx), ``gone`` (410: disable the endpoint), ``throttled``
(429/503, with the Retry-After seconds when given), ``redirect`` (3xx: a
failure, never followed), ``http_error`` (any other status), ``timeout``
(the whole attempt exceeded its budget), ``network`` (connect/read errors),
``refused`` (SSRF guard).
"""

from __future__ import annotations

import asyncio
import email.utils
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass

import httpx

from .errors import DestinationRefused
from .signing import sign

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


def headers_for(
    msg_id: str, body: bytes, keys: Sequence[bytes], extra: Mapping[str, str], timestamp: int | None = None
) -> dict[str, str]:
    ts = int(time.time()) if timestamp is None else timestamp
    headers = {k: v for k, v in extra.items() if k.lower() not in _RESERVED}
    if not any(k.lower() == "user-agent" for k in headers):
        headers["user-agent"] = USER_AGENT
    headers.update(
        {
            "content-type": "application/json",
            "webhook-id": msg_id,
            "webhook-timestamp": str(ts),
            "webhook-signature": sign(keys, msg_id, ts, body),
        }
    )
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


async def attempt(
    client: httpx.AsyncClient,
    url: str,
    msg_id: str,
    body: bytes,
    keys: Sequence[bytes],
    extra_headers: Mapping[str, str],
    *,
    timeout_s: float,
    max_response_bytes: int = 4096,
) -> Result:
    started = time.monotonic()
    headers = headers_for(msg_id, body, keys, extra_headers)
    status: int | None = None
    try:
        # httpx's timeouts are per operation (a receiver dripping bytes resets the read
        # timeout); the outer deadline bounds the whole attempt.
        async with asyncio.timeout(timeout_s):
            async with client.stream("POST", url, content=body, headers=headers) as response:
                status = response.status_code
                retry_after = parse_retry_after(response.headers.get("retry-after"))
                text = await _read_some(response, max_response_bytes)
    except DestinationRefused as exc:
        return Result("refused", error=f"refused: {exc.reason} address", duration_s=time.monotonic() - started)
    except (TimeoutError, httpx.TimeoutException):
        what = "response" if status is not None else "request"
        return Result("timeout", status, error=f"{what} timed out after {timeout_s:g}s", duration_s=time.monotonic() - started)
    except (httpx.HTTPError, OSError) as exc:
        return Result("network", status, error=f"{type(exc).__name__}: {exc}"[:200], duration_s=time.monotonic() - started)
    duration = time.monotonic() - started
    if 200 <= status < 300:
        return Result("success", status, duration_s=duration)
    error = f"HTTP {status}" + (f": {text}" if text else "")
    if status == 410:
        return Result("gone", status, error=error, duration_s=duration)
    if status in (429, 503):
        return Result("throttled", status, retry_after, error, duration)
    if 300 <= status < 400:
        return Result("redirect", status, error=f"HTTP {status}: redirects are not followed", duration_s=duration)
    return Result("http_error", status, error=error, duration_s=duration)


async def _read_some(response: httpx.Response, limit: int) -> str:
    data = b""
    async for chunk in response.aiter_raw():
        data += chunk
        if len(data) >= limit:
            break
    text = data[:limit].decode("utf-8", "replace")
    return " ".join(text.split())[:200]

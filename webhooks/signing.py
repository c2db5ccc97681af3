"""Standard Webhooks v1 signatures (https://www.standardwebhooks.com, spec v1).

The signed content is ``"{webhook-id}.{webhook-timestamp}.{body}"`` where body
is exactly the bytes sent; the signature is ``v1,<base64 HMAC-SHA256>`` keyed
with the base64-decoded part of a ``whsec_...`` secret. While a secret rotates
the endpoint lists several secrets (space-separated) and every delivery
carries one signature per secret, space-separated, so receivers holding
either secret verify it.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import hmac
import logging
from collections.abc import Sequence

from .errors import WebhookConfigError

logger = logging.getLogger(__name__)

PREFIX = "whsec_"
MIN_KEY_BYTES = 24


def parse_secrets(value: str, where: str) -> list[bytes]:
    """The signing keys of ``value`` (space-separated ``whsec_<base64>``); errors name ``where``."""
    keys = []
    for i, secret in enumerate(value.split()):
        raw = secret[len(PREFIX) :] if secret.startswith(PREFIX) else secret
        try:
            key = base64.b64decode(raw, validate=True)
        except (binascii.Error, ValueError):
            raise WebhookConfigError(
                f"Config '{where}' secret #{i + 1} is not a whsec_<base64> secret."
            ) from None
        if not key:
            raise WebhookConfigError(f"Config '{where}' secret #{i + 1} is empty.")
        if len(key) < MIN_KEY_BYTES:
            logger.warning("%s secret #%d is only %d bytes; Standard Webhooks asks for 24 to 64", where, i + 1, len(key))
        keys.append(key)
    if not keys:
        raise WebhookConfigError(f"Config '{where}' is empty: every endpoint needs a whsec_ signing secret.")
    return keys


def sign(keys: Sequence[bytes], msg_id: str, timestamp: int, body: bytes) -> str:
    """The ``webhook-signature`` header value: one ``v1,<sig>`` per key."""
    return signature(keys, msg_id.encode(), str(timestamp).encode(), body).decode()


def signature(keys: Sequence[bytes], msg_id: bytes, timestamp: bytes, body: bytes) -> bytes:
    """:func:`sign` on bytes, as the dispatcher sends it."""
    content = b"%s.%s.%s" % (msg_id, timestamp, body)
    return b" ".join(b"v1," + base64.b64encode(hmac.new(key, content, hashlib.sha256).digest()) for key in keys)

"""``tripwire webhooks receive``: a small local webhook receiver for trying Tripwire out.

It listens on loopback, checks each delivery's Standard Webhooks signature
(``webhook-id``, ``webhook-timestamp``, ``webhook-signature``; HMAC-SHA256 over
``"{id}.{timestamp}.{body}"`` keyed with the base64 part of ``whsec_...``,
timestamps within five minutes) and prints one line per delivery plus the
rule's payload. A bad or missing signature gets a 401 and is printed as
refused, so a wrong secret shows at once. ``--out FILE`` also appends every
verified delivery as a JSON line (for scripts and tests). ``--status`` answers
every delivery with another code (e.g. 503) to watch the dispatcher retry.

It verifies with the standard library only, independently of the dispatcher's
signing code, so it doubles as a check that the two agree.
"""

from __future__ import annotations

import argparse
import base64
import binascii
import hashlib
import hmac
import json
import os
import sys
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

from tripwire.config import Config

TOLERANCE_S = 300
MAX_BODY_BYTES = 4 * 1024 * 1024
SECRET_ENV = "WEBHOOK_SECRET"


class SignatureError(ValueError):
    """A delivery's Standard Webhooks headers do not verify; the message says which part."""


def decode_secret(secret: str) -> bytes:
    raw = secret[len("whsec_") :] if secret.startswith("whsec_") else secret
    try:
        key = base64.b64decode(raw, validate=True)
    except (binascii.Error, ValueError):
        raise SignatureError("the secret is not a whsec_<base64> secret") from None
    if not key:
        raise SignatureError("the secret is empty")
    return key


def verify(keys: list[bytes], headers: dict[str, str], body: bytes, now: float | None = None) -> str:
    """The webhook-id of a delivery whose signature matches one of ``keys``; else SignatureError."""
    msg_id = headers.get("webhook-id", "")
    stamp = headers.get("webhook-timestamp", "")
    signatures = headers.get("webhook-signature", "")
    if not msg_id or not stamp or not signatures:
        raise SignatureError("missing webhook-id, webhook-timestamp or webhook-signature header")
    if not stamp.isascii() or not stamp.isdigit():  # int() would also take " 1", "+1" and "1_000"
        raise SignatureError(f"webhook-timestamp {stamp[:20]!r} is not an integer")
    ts = int(stamp)
    now = time.time() if now is None else now
    if abs(now - ts) > TOLERANCE_S:
        raise SignatureError(f"webhook-timestamp is {int(now - ts)} s away from now (tolerance {TOLERANCE_S} s)")
    content = f"{msg_id}.{ts}.".encode() + body
    expected = [base64.b64encode(hmac.new(k, content, hashlib.sha256).digest()) for k in keys]
    for sig in signatures.split():
        version, _, value = sig.partition(",")
        if version == "v1" and any(hmac.compare_digest(value.encode(), e) for e in expected):
            return msg_id
    raise SignatureError("no v1 signature matches the secret")


class Receiver:
    """The HTTP server (a thread per request) and what it has received."""

    def __init__(self, host: str, port: int, keys: list[bytes] | None, *, status: int = 200,
                 out: Path | None = None, quiet: bool = False) -> None:
        self.keys = keys
        self.status = status
        self.out = out
        self.quiet = quiet
        self.received = 0
        self.refused = 0
        self._lock = threading.Lock()
        receiver = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def do_POST(self) -> None:  # noqa: N802 (http.server's naming)
                receiver.handle(self)

            def log_message(self, format: str, *args: Any) -> None:  # silence the access log
                pass

        self.server = ThreadingHTTPServer((host, port), Handler)
        self.server.daemon_threads = True
        self.port = self.server.server_address[1]

    def handle(self, req: BaseHTTPRequestHandler) -> None:
        raw_length = (req.headers.get("content-length") or "").strip()
        if not raw_length.isdigit():
            # chunked or garbled: refuse plainly (the handler thread used to die on "-1" or "abc")
            req.close_connection = True
            self._answer(req, 411, {"error": "send the body with a Content-Length (no chunked encoding)"})
            return
        length = int(raw_length)
        if length > MAX_BODY_BYTES:
            req.close_connection = True
            self._answer(req, 413, {"error": "body_too_large"})
            return
        body = req.rfile.read(length)
        headers = {k.lower(): v for k, v in req.headers.items()}
        try:
            msg_id = verify(self.keys, headers, body) if self.keys is not None else headers.get("webhook-id", "?")
            delivery = json.loads(body)
            if not isinstance(delivery, dict):
                raise ValueError("the body is not a JSON object")
        except (SignatureError, ValueError) as exc:
            with self._lock:
                self.refused += 1
            self._print(f"REFUSED {headers.get('webhook-id', '-')}: {exc}")
            self._answer(req, 401 if isinstance(exc, SignatureError) else 400, {"error": str(exc)})
            return
        if self.status >= 300:
            self._print(f"answering {self.status} to {msg_id} (--status)")
            self._answer(req, self.status, {"error": "refused by --status"})
            return
        with self._lock:
            self.received += 1
            if self.out is not None:  # one write() per line: a kill never leaves half a line
                signed = {k: headers.get(k, "") for k in ("webhook-id", "webhook-timestamp", "webhook-signature")}
                line = json.dumps({"webhook_id": msg_id, "received_at": time.time(), "headers": signed,
                                   "raw": body.decode("utf-8", "replace"), "body": delivery}) + "\n"
                with self.out.open("ab", buffering=0) as f:
                    f.write(line.encode())
        self._print(describe(msg_id, delivery, verified=self.keys is not None))
        self._answer(req, self.status, {"ok": True})

    def _answer(self, req: BaseHTTPRequestHandler, status: int, doc: dict[str, Any]) -> None:
        data = json.dumps(doc).encode()
        req.send_response(status)
        req.send_header("content-type", "application/json")
        req.send_header("content-length", str(len(data)))
        req.end_headers()
        req.wfile.write(data)

    def _print(self, line: str) -> None:
        if not self.quiet:
            with self._lock:
                sys.stdout.write(line + "\n")
                sys.stdout.flush()

    def serve_forever(self) -> None:
        self.server.serve_forever(poll_interval=0.2)

    def close(self) -> None:
        self.server.shutdown()
        self.server.server_close()


def describe(msg_id: str, delivery: dict[str, Any], *, verified: bool) -> str:
    data = delivery.get("data") or {}
    head = (
        f"{'✓ verified' if verified else '? unverified'} {msg_id} {delivery.get('type', '?')}: "
        f"rule {data.get('rule')!r} key {data.get('key')!r} fired_at {data.get('fired_at')} "
        f"({len(data.get('events') or [])} events)"
    )
    if data.get("userId") is not None:
        head += f"\n  userId {data['userId']!r} anonymousId {data.get('anonymousId')!r} ({data.get('identity')})"
    payload = data.get("payload")
    return head if payload is None else f"{head}\n  payload {json.dumps(payload, ensure_ascii=False)}"


def register(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    hooks = sub.choices.get("webhooks")
    if hooks is None:  # registered before tripwire.cli.webhooks: make the group ourselves
        hooks = sub.add_parser("webhooks", help="webhook tools")
        hooks.add_subparsers(dest="webhooks_command", metavar="SUBCOMMAND", required=True)
    cmds = next(a for a in hooks._actions if isinstance(a, argparse._SubParsersAction))
    p = cmds.add_parser(
        "receive",
        help="a local webhook receiver that verifies signatures and prints each delivery (for trying things out)",
        description="Listen on HOST:PORT, verify Standard Webhooks signatures with --secret, print deliveries.",
    )
    p.add_argument("--host", default="127.0.0.1", help="listen address (default 127.0.0.1)")
    p.add_argument("--port", type=int, default=9000, help="listen port (default 9000; 0 = any free port)")
    p.add_argument("--secret", default=os.environ.get(SECRET_ENV, ""),
                   help=f"the endpoint's whsec_... signing secret (default ${SECRET_ENV})")
    p.add_argument("--no-verify", action="store_true", help="accept deliveries without checking signatures")
    p.add_argument("--status", type=int, default=200, help="answer every delivery with this HTTP status (default 200)")
    p.add_argument("--out", metavar="FILE", help="also append each verified delivery to FILE as a JSON line")
    p.add_argument("--quiet", action="store_true", help="print nothing per delivery")
    p.set_defaults(handler=receive_command)


def receive_command(args: argparse.Namespace, config: Config) -> int:
    keys: list[bytes] | None = None
    if not args.no_verify:
        if not args.secret:
            print(f"tripwire webhooks receive: give --secret whsec_... (or ${SECRET_ENV}), or --no-verify", file=sys.stderr)
            return 2
        try:
            keys = [decode_secret(s) for s in args.secret.split()]
        except SignatureError as exc:
            print(f"tripwire webhooks receive: --secret: {exc}", file=sys.stderr)
            return 2
    try:
        receiver = Receiver(args.host, args.port, keys, status=args.status,
                            out=Path(args.out) if args.out else None, quiet=args.quiet)
    except OSError as exc:
        print(f"tripwire webhooks receive: cannot listen on {args.host}:{args.port}: {exc.strerror}", file=sys.stderr)
        return 1
    print(f"listening on http://{args.host}:{receiver.port}/ (Ctrl-C to stop)", flush=True)
    import signal

    signal.signal(signal.SIGTERM, lambda *_: threading.Thread(target=receiver.server.shutdown).start())
    try:
        receiver.serve_forever()
    except KeyboardInterrupt:
        pass
    finally:
        receiver.server.server_close()
    print(f"received {receiver.received}, refused {receiver.refused}", flush=True)
    return 0

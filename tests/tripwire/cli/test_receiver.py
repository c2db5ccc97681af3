"""`tripwire webhooks receive`: verifies Standard Webhooks signatures (checked with the reference library)."""

from __future__ import annotations

import json
import threading
import time
from collections.abc import Iterator
from datetime import UTC, datetime
from pathlib import Path

import httpx
import pytest
from standardwebhooks.webhooks import Webhook

from tripwire.cli.receiver import Receiver, decode_secret

SECRET = "whsec_Y4PBOb53VF7OoWLmD0wZfsT9u0Rr2vhV"
OTHER = "whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw"
BODY = json.dumps({"type": "trigger.fired", "data": {"rule": "abandoned cart", "key": "v1", "payload": {"sku": "s"}}})


@pytest.fixture
def receiver(tmp_path: Path) -> Iterator[Receiver]:
    r = Receiver("127.0.0.1", 0, [decode_secret(s) for s in (SECRET, OTHER)], out=tmp_path / "out.jsonl", quiet=True)
    thread = threading.Thread(target=r.serve_forever, daemon=True)
    thread.start()
    yield r
    r.close()
    thread.join(5)


def post(r: Receiver, secret: str, msg_id: str, when: datetime | None = None) -> httpx.Response:
    when = when or datetime.now(UTC)
    sig = Webhook(secret).sign(msg_id, when, BODY)
    headers = {"webhook-id": msg_id, "webhook-timestamp": str(int(when.timestamp())), "webhook-signature": sig}
    return httpx.post(f"http://127.0.0.1:{r.port}/", content=BODY, headers=headers, timeout=5)


def test_signed_deliveries_are_accepted_and_recorded(receiver: Receiver, tmp_path: Path) -> None:
    assert post(receiver, SECRET, "msg_1").status_code == 200
    assert post(receiver, OTHER, "msg_2").status_code == 200  # either secret of a rotation
    lines = [json.loads(x) for x in (tmp_path / "out.jsonl").read_text().splitlines()]
    assert [x["webhook_id"] for x in lines] == ["msg_1", "msg_2"]
    assert lines[0]["body"]["data"]["payload"] == {"sku": "s"}


def test_wrong_secret_stale_timestamp_and_missing_headers_are_refused(receiver: Receiver) -> None:
    assert post(receiver, "whsec_" + "QUFBQUFBQUFBQUFBQUFBQUFBQUFBQUFB", "msg_x").status_code == 401
    stale = datetime.fromtimestamp(time.time() - 3600, UTC)
    assert post(receiver, SECRET, "msg_y", stale).status_code == 401
    assert httpx.post(f"http://127.0.0.1:{receiver.port}/", content=BODY, timeout=5).status_code == 401
    assert receiver.received == 0 and receiver.refused == 3


def raw_request(r: Receiver, head: str, body: bytes = b"") -> bytes:
    import socket

    with socket.create_connection(("127.0.0.1", r.port), timeout=5) as s:
        s.sendall(head.encode() + b"\r\n\r\n" + body)
        return s.recv(1000)


def test_bad_content_length_and_non_object_bodies_get_an_answer(receiver: Receiver) -> None:
    # the handler thread used to die on these (a traceback on stderr, the connection dropped unanswered)
    for length in ("-5", "abc"):
        answer = raw_request(receiver, f"POST / HTTP/1.1\r\nHost: x\r\nContent-Length: {length}", b"{}")
        assert answer.startswith(b"HTTP/1.1 411"), answer
    answer = raw_request(receiver, "POST / HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked", b"2\r\n{}\r\n0\r\n\r\n")
    assert answer.startswith(b"HTTP/1.1 411"), answer
    loose = Receiver("127.0.0.1", 0, None, quiet=True)  # --no-verify: any body reaches describe()
    thread = threading.Thread(target=loose.serve_forever, daemon=True)
    thread.start()
    try:
        assert httpx.post(f"http://127.0.0.1:{loose.port}/", content=b"[1, 2]", timeout=5).status_code == 400
        assert httpx.post(f"http://127.0.0.1:{loose.port}/", content=BODY, timeout=5).status_code == 200
    finally:
        loose.close()
        thread.join(5)


def test_timestamps_are_plain_digits(receiver: Receiver) -> None:
    now = int(time.time())
    sig = Webhook(SECRET).sign("msg_t", datetime.fromtimestamp(now, UTC), BODY)
    spaced = f"{now // 1000}_{now % 1000:03d}"  # Python's int() accepts it; the spec's integer does not
    headers = {"webhook-id": "msg_t", "webhook-timestamp": spaced, "webhook-signature": sig}
    answer = httpx.post(f"http://127.0.0.1:{receiver.port}/", content=BODY, headers=headers, timeout=5)
    assert answer.status_code == 401 and "not an integer" in answer.text


def test_the_printed_delivery_names_the_person_when_the_trigger_does() -> None:
    from tripwire.cli.receiver import describe

    data = {"rule": "abandoned cart", "key": "anon-1", "userId": "user-demo", "anonymousId": "anon-1",
            "identity": "claimed", "events": [{}], "payload": {"sku": "s"}}
    text = describe("trg_1", {"type": "trigger.fired", "data": data}, verified=True)
    assert text.splitlines()[1] == "  userId 'user-demo' anonymousId 'anon-1' (claimed)"
    assert "userId" not in describe("trg_2", {"type": "trigger.fired", "data": {"key": "anon-2"}}, verified=True)

"""Structured logs: JSON lines, and secrets and client IPs masked in both formats."""

from __future__ import annotations

import logging

import orjson
import pytest

from tripwire.config import ConfigError, from_dict
from tripwire.logs import JsonFormatter, RedactingFormatter, logging_config, redact


def record(msg: str, *args: object, exc: bool = False) -> logging.LogRecord:
    exc_info = None
    if exc:
        try:
            raise RuntimeError("connect to http://user:hunter22@10.1.2.3:9092 failed")
        except RuntimeError:
            import sys

            exc_info = sys.exc_info()
    return logging.LogRecord("rules.service", logging.WARNING, __file__, 1, msg, args, exc_info)


def test_secrets_and_client_ips_are_masked() -> None:
    text = redact("key whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw from 203.0.113.77 and 2001:db8:1:2::5 auth Basic ZGVtbzo=")
    assert "MfKQ" not in text and "203.0.113.77" not in text and "2001:db8:1:2::5" not in text and "ZGVtbzo" not in text
    assert "203.0.113.x" in text and "whsec_***" in text
    # loopback and listen addresses stay readable (operators and the tests parse them)
    assert redact("listening on http://127.0.0.1:8080 and [::1]") == "listening on http://127.0.0.1:8080 and [::1]"
    assert redact("version 1.2.3.4.5 and 999.1.1.1") == "version 1.2.3.4.5 and 999.1.1.1"


def test_json_lines_carry_level_logger_message_and_a_masked_traceback() -> None:
    line = JsonFormatter(service="engine").format(record("client %s sent %d events", "198.51.100.4", 3, exc=True))
    doc = orjson.loads(line)
    assert doc["level"] == "warning" and doc["logger"] == "rules.service" and doc["service"] == "engine"
    assert doc["msg"] == "client 198.51.100.x sent 3 events"
    assert doc["ts"].endswith("Z") and "RuntimeError" in doc["exc"]
    assert "hunter22" not in doc["exc"] and "10.1.2.3" not in doc["exc"]
    assert "\n" not in line


def test_text_format_is_masked_too() -> None:
    out = RedactingFormatter().format(record("token=abcdef123456 from 192.0.2.200"))
    assert "abcdef123456" not in out and "192.0.2.x" in out


def test_logging_section_is_checked() -> None:
    assert logging_config(from_dict({"logging": {"format": "json"}})).format == "json"
    with pytest.raises(ConfigError, match="logging.format"):
        logging_config(from_dict({"logging": {"format": "xml"}}))


def test_a_library_repeating_itself_is_logged_once_a_minute_with_a_count() -> None:
    # aiokafka logs 'Unable connect to ...' at ERROR twice a second while the broker is away
    # (7,200 lines an hour); Tripwire's own warning already says it is spilling.
    from tripwire.logs import RepeatFilter

    now = [1000.0]
    f = RepeatFilter(("aiokafka",), interval_s=60, clock=lambda: now[0])

    def kafka(msg: str) -> logging.LogRecord:
        return logging.LogRecord("aiokafka.conn", logging.ERROR, __file__, 1, msg, (), None)

    passed = []
    for i in range(240):  # two minutes, twice a second
        now[0] = 1000.0 + i / 2
        r = kafka('Unable connect to "127.0.0.1:9092": [Errno 111] Connection refused')
        if f.filter(r):
            passed.append(r.getMessage())
    assert passed == ['Unable connect to "127.0.0.1:9092": [Errno 111] Connection refused',
                      'Unable connect to "127.0.0.1:9092": [Errno 111] Connection refused (119 more in 60s)']
    assert f.filter(kafka("another message"))
    assert all(f.filter(record("rules.service says %s", i)) for i in range(10))  # others are never held back


def test_the_handler_holds_back_uvicorns_repeated_invalid_request_warnings() -> None:
    # Every port scanner probing the collector made one "Invalid HTTP request received." line.
    from tripwire.logs import CHATTY_LIBRARIES, RepeatFilter

    f = RepeatFilter(CHATTY_LIBRARIES, clock=lambda: 5.0)
    lines = [logging.LogRecord("uvicorn.error", logging.WARNING, __file__, 1, "Invalid HTTP request received.", (), None)
             for _ in range(50)]
    assert sum(f.filter(r) for r in lines) == 1

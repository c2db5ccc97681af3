"""A shop's backend in a process of its own: sends events with the official Segment Python SDK.

    python tests/e2e/backend.py URL WRITE_KEY EVENTS_JSON

``EVENTS_JSON`` is a list of ``{"call": "track"|"identify", "user_id", "anonymous_id"?, "event"?,
"properties"?, "traits"?, "message_id"?}``. Exits 0 once the collector accepted every event, 1 (with
the SDK's error) otherwise: the SDK's ``on_error`` hears every batch it gave up on.
"""

from __future__ import annotations

import json
import sys

from segment.analytics import Client


def main(url: str, write_key: str, events: list[dict[str, object]]) -> int:
    errors: list[str] = []
    client = Client(write_key, host=url, sync_mode=True, max_retries=3,
                    on_error=lambda error, batch: errors.append(f"{error!r} ({len(batch)} events)"))
    for e in events:
        call = e.pop("call")
        getattr(client, str(call))(**e)
    client.flush()  # sync_mode: each call was sent before it returned (shutdown() fails in that mode)
    if errors:
        print("the collector refused: " + "; ".join(errors), file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1], sys.argv[2], json.loads(sys.argv[3])))

"""The tracker when the collector refuses it, in a real browser against the real collector.

A refusal that waiting cannot cure (the page's origin is not allowed, the write key is unknown)
ends the batch: one console warning per page naming the reason, nothing kept in localStorage,
nothing sent again. A failure that waiting can cure (the collector answers 503) keeps the queue
and backs off, as a network error does (test_tracker.py).
"""

from __future__ import annotations

import json
from collections import Counter
from collections.abc import Iterator
from pathlib import Path

import pytest
from playwright.sync_api import BrowserContext, Request, Response

from .helpers import FAST, WRITE_KEY, Collector, Site, backoff, open_page, queued, settle, stored, wait_for

OTHER_ORIGIN = "https://shop.example"


@pytest.fixture
def elsewhere(tmp_path: Path) -> Iterator[Collector]:
    """A collector whose one source allows another origin than the test site's."""
    c = Collector(tmp_path / "data", [OTHER_ORIGIN])
    c.server.start()
    try:
        yield c
    finally:
        c.server.stop()


class Traffic:
    """What the browser did with the tracker's batches: messageIds sent, answers, network failures.

    Playwright's sync API delivers these events only while the test calls into it: read them
    after a call on the page (``stored``, ``queued``, ...).
    """

    def __init__(self, context: BrowserContext) -> None:
        self.sent: list[str] = []
        self.statuses: list[int] = []
        self.failed: list[str] = []
        context.on("request", self._request)
        context.on("response", self._response)
        context.on("requestfailed", self._failed)

    @staticmethod
    def _batch(request: Request) -> bool:
        return request.method == "POST" and request.url.endswith("/v1/batch")

    def _request(self, request: Request) -> None:
        if self._batch(request):
            self.sent += [e["messageId"] for e in json.loads(request.post_data or "{}")["batch"]]

    def _response(self, response: Response) -> None:
        if self._batch(response.request):
            self.statuses.append(response.status)

    def _failed(self, request: Request) -> None:
        if self._batch(request):
            self.failed.append(request.failure or "?")

    def resent(self) -> list[str]:
        return [m for m, n in Counter(self.sent).items() if n > 1]


@pytest.mark.parametrize(
    ("key", "status", "reason"),
    [(WRITE_KEY, 403, "origin_not_allowed"), ("wk_unknown", 401, "unknown_write_key")],
)
def test_a_refused_page_warns_once_keeps_nothing_and_sends_nothing_twice(
    context: BrowserContext, site: Site, elsewhere: Collector, key: str, status: int, reason: str,
) -> None:
    traffic = Traffic(context)
    warnings: list[str] = []
    page = context.new_page()
    page.on("console", lambda m: m.type == "warning" and warnings.append(m.text))
    page.goto(site.add(f"/refused-{reason}.html", elsewhere.url, attrs=FAST + ' data-batch="3"', key=key))
    page.wait_for_function("window.tw && window.tw.l")
    for round_ in range(3):  # several batches: the page view, then three rounds of tracks
        page.evaluate(f"for (let i = 0; i < 7; i++) tw('track', 'Refused', {{round: {round_}, i}})")
        wait_for(lambda: queued(page) == [], what=f"an empty queue after round {round_} (queued events are refused ones kept)")
        assert backoff(page) == 0, "a refusal is not a failure to back off from"
    settle()  # several flush intervals, longer than a first backoff: time for any retry to show
    assert set(stored(page)) == {"tw_i"}, "localStorage holds more than the visitor's ids"
    assert len(traffic.sent) == 1 + 3 * 7
    assert traffic.resent() == [], "refused events were sent again"
    assert traffic.failed == [], "the browser hid the refusal from the page (no CORS header on it)"
    assert set(traffic.statuses) == {status}
    assert elsewhere.events() == []
    assert len(warnings) == 1, f"one warning per page, not per batch: {warnings}"
    # "tw refused 403 {...}": the collector's answer, which names the reason.
    prefix = f"tw refused {status} "
    assert warnings[0].startswith(prefix), warnings[0]
    assert json.loads(warnings[0].removeprefix(prefix))["error"] == reason


def test_a_refusal_warns_again_on_the_next_page_only_once(context: BrowserContext, site: Site, elsewhere: Collector) -> None:
    warnings: list[str] = []
    page = context.new_page()
    page.on("console", lambda m: m.type == "warning" and warnings.append(m.text))
    page.goto(site.add("/refused-twice.html", elsewhere.url, attrs=FAST))
    wait_for(lambda: queued(page) == [] and warnings, what="the first page's warning")
    page.reload()
    page.wait_for_function("window.tw && window.tw.l")
    page.evaluate("tw('track', 'Second Page')")
    wait_for(lambda: queued(page) == [] and len(warnings) == 2, what="an empty queue and the second page's warning")
    settle(0.3)
    assert queued(page) == []
    assert len(warnings) == 2 and all("origin_not_allowed" in w for w in warnings), warnings


def test_a_503_keeps_the_queue_and_backs_off_then_delivers_each_event_once(
    context: BrowserContext, site: Site, collector: Collector,
) -> None:
    traffic = Traffic(context)
    # The site hosts the script: the collector restarts below.
    page = open_page(context, site.add("/unavailable.html", collector.url, attrs=FAST, self_hosted=True))
    warnings: list[str] = []
    page.on("console", lambda m: m.type == "warning" and warnings.append(m.text))
    wait_for(lambda: collector.events(), what="the page view")
    collector.stop_log()  # the collector keeps serving and answers 503 log_unavailable
    page.evaluate("tw('track', 'While Unavailable', {n: 1}); tw('track', 'While Unavailable', {n: 2})")
    wait_for(lambda: backoff(page) >= 300, what="a retry after the first backoff, failed again (backoff doubled)")
    assert traffic.statuses.count(503) >= 2, traffic.statuses
    assert traffic.failed == [], "the 503 was readable: this is the 5xx path, not a network error"
    kept = queued(page)
    assert [e.get("event") for e in kept] == ["While Unavailable"] * 2, "the events the collector could not take are kept"
    waiting = {e["messageId"] for e in kept}
    # The next page load retries them. Reloaded while the collector is down (refused: nothing in flight can
    # arrive): a retry in flight at the reload that reached a collector already back up would arrive, and be
    # sent again by the next page, which cannot know (at least once; the messageId is the same).
    collector.server.stop()
    page.reload()
    collector.server.start()  # with a fresh log
    wait_for(lambda: waiting <= {e["messageId"] for e in collector.events()}, what="the kept events in the log")
    wait_for(lambda: queued(page) == [] and backoff(page) == 0, what="an empty queue")
    settle()
    assert queued(page) == []
    events = collector.events()
    assert len(events) == 4 and len({e["messageId"] for e in events}) == 4, "each event once: two page views, two tracks"
    assert warnings == [], "a failure that waiting cures is no refusal to warn about"

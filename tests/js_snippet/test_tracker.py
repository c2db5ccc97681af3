"""The tracker in a real browser against the real collector: what arrives in the event log.

Each test gets a fresh browser context (own localStorage), its own collector and SQLite log,
and pages on a separate origin that embed the README's loader with short flush intervals.
"""

from __future__ import annotations

import collections
import time
from typing import Any

from playwright.sync_api import BrowserContext

from .helpers import FAST, WRITE_KEY, Collector, Site, backoff, open_page, queued, settle, stored, wait_for


def wait_events(collector: Collector, n: int, timeout_s: float = 30) -> list[dict[str, Any]]:
    return wait_for(lambda: (e := collector.events()) and len(e) >= n and e, timeout_s, f"{n} events in the log")


def by_type(events: list[dict[str, Any]], kind: str, name: str | None = None) -> list[dict[str, Any]]:
    return [e for e in events if e["type"] == kind and (name is None or e.get("event") == name)]


def assert_once_each(events: list[dict[str, Any]]) -> None:
    counts = collections.Counter(e["messageId"] for e in events)
    assert [m for m, n in counts.items() if n > 1] == [], "some messageIds arrived more than once"


def test_page_view_on_load_carries_full_context(context: BrowserContext, site: Site, collector: Collector) -> None:
    first = site.add("/first.html", collector.url, attrs=FAST, body='<a id="next" href="/landing.html?utm_source=news&utm_medium=email&utm_campaign=spring&utm_term=shoes&utm_content=hero&x=1">next</a>')
    site.add("/landing.html", collector.url, attrs=FAST, title="Landing")
    page = open_page(context, first)
    page.click("#next")
    page.wait_for_url("**/landing.html*")
    events = wait_events(collector, 2)
    landing = next(e for e in by_type(events, "page") if e["context"]["page"]["path"] == "/landing.html")
    ctx = landing["context"]
    url = f"{site.origin}/landing.html?utm_source=news&utm_medium=email&utm_campaign=spring&utm_term=shoes&utm_content=hero&x=1"
    assert ctx["page"] == {"url": url, "path": "/landing.html", "referrer": first, "title": "Landing",
                           "search": "?utm_source=news&utm_medium=email&utm_campaign=spring&utm_term=shoes&utm_content=hero&x=1"}
    assert landing["properties"] == ctx["page"]  # Segment copies the page fields into a page call's properties
    assert ctx["campaign"] == {"source": "news", "medium": "email", "name": "spring", "term": "shoes", "content": "hero"}
    assert ctx["library"] == {"name": "tripwire.js", "version": "0.1.0"}
    assert ctx["locale"] and isinstance(ctx["sessionId"], int)
    assert ctx["userAgent"].startswith("Mozilla/")  # added by the collector
    assert landing["anonymousId"] and landing["messageId"] and landing["source"] == "site"
    for field in ("timestamp", "originalTimestamp", "sentAt", "receivedAt"):
        assert landing[field].endswith("Z"), field
    assert landing["originalTimestamp"] <= landing["sentAt"]
    # Same visitor and session on both pages.
    first_view = next(e for e in events if e["context"]["page"]["path"] == "/first.html")
    assert first_view["anonymousId"] == landing["anonymousId"]
    assert first_view["context"]["sessionId"] == ctx["sessionId"]


def test_session_ends_after_30_minutes_without_events(context: BrowserContext, site: Site, collector: Collector) -> None:
    page = open_page(context, site.add("/session.html", collector.url, attrs=FAST))
    # The visitor's ids live in tw_i: s = the session's start (its id), l = its last activity (ms).
    idle = "i => localStorage.tw_i = JSON.stringify({...JSON.parse(localStorage.tw_i), s: i[0], l: Date.now() - i[1] * 60e3})"
    page.evaluate(f"({idle})([1000, 29]); tw('track', 'Within')")
    page.evaluate(f"({idle})([2000, 31]); tw('track', 'After Idle')")
    page.evaluate("tw('track', 'Next')")
    events = wait_events(collector, 4)
    sessions = {e["event"]: e["context"]["sessionId"] for e in by_type(events, "track")}
    assert sessions["Within"] == 1000
    assert sessions["After Idle"] == sessions["Next"] > 2000  # a new session, started now


def test_track_and_identify(context: BrowserContext, site: Site, collector: Collector) -> None:
    page = open_page(context, site.add("/shop.html", collector.url, attrs=FAST))
    page.evaluate("tw('track', 'Product Viewed', {sku: 'A-1', price: 9.5, tags: ['x']})")
    page.evaluate("tw('identify', 'user-42', {email: 'a@example.com', plan: 'pro'})")
    page.evaluate("tw('track', 'Added To Cart', {sku: 'A-1'}); tw('page', 'Cart', {step: 2})")
    page.evaluate("tw('identify', {vip: true})")  # traits only: keeps the user
    events = wait_events(collector, 6)
    viewed, added = by_type(events, "track", "Product Viewed")[0], by_type(events, "track", "Added To Cart")[0]
    identify, traits_only = by_type(events, "identify")
    assert traits_only["userId"] == "user-42" and traits_only["traits"] == {"vip": True}
    named = next(e for e in by_type(events, "page") if e.get("name") == "Cart")
    assert viewed["properties"] == {"sku": "A-1", "price": 9.5, "tags": ["x"]}
    assert "userId" not in viewed
    assert identify["userId"] == "user-42" and identify["traits"] == {"email": "a@example.com", "plan": "pro"}
    assert added["userId"] == "user-42" and named["userId"] == "user-42"
    assert named["properties"]["step"] == 2 and named["properties"]["path"] == "/shop.html"
    assert len({e["anonymousId"] for e in events}) == 1
    # userId is remembered across page loads.
    page.reload()
    wait_for(lambda: len(by_type(collector.events(), "page")) >= 3, what="the reload's page view")
    later = [e for e in by_type(collector.events(), "page") if e["originalTimestamp"] > named["originalTimestamp"]]
    assert later and all(e["userId"] == "user-42" for e in later)


def test_reset_forgets_the_user(context: BrowserContext, site: Site, collector: Collector) -> None:
    page = open_page(context, site.add("/r.html", collector.url, attrs=FAST))
    page.evaluate("tw('identify', 'user-7'); tw('track', 'Before')")
    page.evaluate("tw('reset'); tw('track', 'After')")
    events = wait_events(collector, 4)
    before, after = by_type(events, "track", "Before")[0], by_type(events, "track", "After")[0]
    assert before["userId"] == "user-7" and "userId" not in after
    assert before["anonymousId"] != after["anonymousId"]
    assert after["context"]["sessionId"] != before["context"]["sessionId"]


def test_track_then_navigating_away_still_arrives(context: BrowserContext, site: Site, collector: Collector) -> None:
    # A long interval: only the page-hide beacon can deliver the events.
    page = open_page(context, site.add("/leave.html", collector.url, attrs='data-interval="60000"'))
    site.pages["/elsewhere.html"] = "<!doctype html><title>elsewhere</title>"
    page.evaluate(f"tw('track', 'Outbound Click', {{to: 'elsewhere'}}); location.href = '{site.origin}/elsewhere.html'")
    page.wait_for_url("**/elsewhere.html")
    events = wait_events(collector, 2)
    assert by_type(events, "track", "Outbound Click")[0]["properties"] == {"to": "elsewhere"}
    # Coming back: the queue the beacon emptied is not sent a second time.
    page.goto(site.origin + "/leave.html")
    page.goto(site.origin + "/elsewhere.html")  # unload again: beacon the second page view
    events = wait_for(lambda: len(e := collector.events()) >= 3 and e, what="the second page view")
    settle()
    events = collector.events()
    assert len(events) == 3
    assert_once_each(events)


def test_collector_down_then_back_delivers_each_event_once(context: BrowserContext, site: Site, collector: Collector) -> None:
    # The site hosts the script itself here: with the collector down it could not serve /t.js.
    url = site.add("/down.html", collector.url, attrs=FAST, self_hosted=True)
    collector.server.stop()
    page = open_page(context, url)
    page.evaluate("for (let i = 0; i < 3; i++) tw('track', 'Offline ' + i, {i})")
    # The sends fail: everything is kept in localStorage and the tracker backs off.
    wait_for(lambda: backoff(page), what="a failed send (backoff)")
    waiting = queued(page)
    assert [e["type"] for e in waiting] == ["page", "track", "track", "track"]
    assert collector.events() == []
    # Leaving while the collector is failing must not beacon the queue away. Reloaded while it is down:
    # a retry in flight at the reload that reached a collector already back up would arrive, and the next
    # page would send it again after its lease (at least once, same messageId: deduped downstream).
    page.reload()
    wait_for(lambda: len(queued(page)) == 5, what="the four kept events and the reload's page view")
    collector.server.start()
    offline = {"Offline 0", "Offline 1", "Offline 2"}

    def arrived() -> list[dict[str, Any]] | None:
        events = collector.events()
        return events if offline <= {e["event"] for e in by_type(events, "track")} else None

    events = wait_for(arrived, what="the three offline tracks")
    assert {e["messageId"] for e in events} >= {e["messageId"] for e in waiting}
    wait_for(lambda: queued(page) == [] and backoff(page) == 0, what="an empty queue")
    settle()
    events = collector.events()
    assert len(events) == 5
    assert_once_each(events)


def test_queue_cap_holds_and_counts_drops(context: BrowserContext, site: Site, collector: Collector) -> None:
    context.route("**/v1/batch", lambda route: route.abort())
    page = open_page(context, site.add("/cap.html", collector.url, attrs=FAST + ' data-cap="5" data-batch="2"'))
    for i in range(20):
        page.evaluate(f"tw('track', 'E{i}')")
        # Each call trims to the cap; a failed batch of 2 (data-batch) trimmed while in flight comes back
        # when its fetch fails, and is trimmed at the next call (src/index.js says so): on a loaded machine
        # that return can land between two calls.
        assert len(queued(page)) <= 5 + 2
    created = 21  # the page view and 20 tracks
    settle(0.3)  # failed batches come back, trimmed to the cap again
    assert len(queued(page)) == 5
    context.unroute("**/v1/batch")
    page.evaluate("dispatchEvent(new Event('online'))")
    wait_for(lambda: queued(page) == [], what="an empty queue")
    events = collector.events()
    assert 0 < len(events) <= 5 and by_type(events, "track")[-1]["event"] == "E19"
    # Every event lost to the cap is counted in the context of a delivered one.
    dropped = sum(e["context"].get("dropped", 0) for e in events)
    assert dropped == created - len(events)
    assert_once_each(events)


def test_spa_navigation_produces_page_views(context: BrowserContext, site: Site, collector: Collector) -> None:
    url = site.add("/app.html", collector.url, attrs=FAST + " data-hash")
    page = open_page(context, url)
    page.evaluate("history.pushState({}, '', '/app/one')")
    page.evaluate("history.replaceState({s: 1}, '')")  # same URL: state only, no page view
    page.evaluate("history.replaceState({}, '', '/app/two?tab=3')")
    page.evaluate("history.back()")
    page.wait_for_url(url)
    page.evaluate("location.hash = 'details'")
    views = wait_for(lambda: len(v := by_type(collector.events(), "page")) >= 5 and v, what="five page views")
    settle()
    views = sorted(by_type(collector.events(), "page"), key=lambda e: e["originalTimestamp"])
    assert [v["context"]["page"]["url"].removeprefix(site.origin) for v in views] == [
        "/app.html", "/app/one", "/app/two?tab=3", "/app.html", "/app.html#details",
    ]
    assert views[1]["context"]["page"]["referrer"] == url  # an SPA view's referrer is the previous view
    assert views[2]["context"]["page"]["referrer"] == site.origin + "/app/one"
    assert views[2]["properties"]["search"] == "?tab=3"


def test_hash_changes_are_not_page_views_by_default(context: BrowserContext, site: Site, collector: Collector) -> None:
    page = open_page(context, site.add("/nohash.html", collector.url, attrs=FAST))
    page.evaluate("location.hash = 'a'")
    page.evaluate("tw('track', 'After Hash')")
    wait_for(lambda: by_type(collector.events(), "track"), what="the track")
    settle()
    assert len(by_type(collector.events(), "page")) == 1


def test_gpc_and_dnt_produce_nothing(context: BrowserContext, site: Site, collector: Collector) -> None:
    site.pages["/plain.html"] = "<!doctype html><title>no tracker here</title>"
    requests: list[str] = []
    context.on("request", lambda r: "/v1/" in r.url and requests.append(r.url))
    for signal in ("globalPrivacyControl', {get: () => true}", "doNotTrack', {get: () => '1'}"):
        page = context.new_page()
        page.add_init_script(f"Object.defineProperty(Navigator.prototype, '{signal})")
        page.goto(site.add("/private.html", collector.url, attrs=FAST))
        page.wait_for_load_state("load")
        page.evaluate("tw('track', 'Should Not Arrive'); tw('identify', 'nobody')")
        settle(0.5)
        page.goto(site.origin + "/plain.html")  # unload too
        assert page.evaluate("localStorage.length") == 0
    settle()
    assert requests == [] and collector.events() == []
    # The site owner may choose to ignore the signals.
    page = context.new_page()
    page.add_init_script("Object.defineProperty(Navigator.prototype, 'globalPrivacyControl', {get: () => true})")
    page.goto(site.add("/ignoring.html", collector.url, attrs=FAST + " data-ignore-dnt"))
    assert wait_events(collector, 1)[0]["context"]["page"]["path"] == "/ignoring.html"


def test_opt_out_persists_across_reloads(context: BrowserContext, site: Site, collector: Collector) -> None:
    page = open_page(context, site.add("/consent.html", collector.url, attrs=FAST))
    wait_events(collector, 1)
    page.evaluate("tw('optOut')")
    assert stored(page) == {"tw_x": 1}  # ids and queue forgotten, the choice kept
    page.reload()
    page.wait_for_function("window.tw && window.tw.l")
    page.evaluate("tw('track', 'Opted Out'); tw('identify', 'u1')")
    settle()
    assert len(collector.events()) == 1
    assert stored(page) == {"tw_x": 1}
    page.evaluate("tw('optIn'); tw('track', 'Opted In')")
    events = wait_events(collector, 2)
    assert [e.get("event") for e in events] == [None, "Opted In"]
    assert events[1]["anonymousId"] != events[0]["anonymousId"]  # a new visitor id after opting back in


def test_calls_before_the_script_loads_are_delivered(context: BrowserContext, site: Site, collector: Collector) -> None:
    before = (
        f"tw('init', {{key: '{WRITE_KEY}', interval: 150}});"  # options from an init call, no data-key
        "tw('identify', 'early-user', {plan: 'pro'});"
        "tw('track', 'Early Bird', {n: 1});"
    )
    open_page(context, site.add("/early.html", collector.url, before=before, key=None))
    events = wait_events(collector, 3)
    assert [e["type"] for e in events] == ["identify", "track", "page"]
    assert all(e["userId"] == "early-user" for e in events)
    assert events[1]["properties"] == {"n": 1}


def test_no_storage_mode_and_cookie_mirror(context: BrowserContext, site: Site, collector: Collector) -> None:
    page = open_page(context, site.add("/memory.html", collector.url, attrs=FAST + " data-memory"))
    page.evaluate("tw('track', 'In Memory')")
    events = wait_events(collector, 2)
    assert page.evaluate("localStorage.length") == 0
    assert by_type(events, "track")[0]["anonymousId"] == events[0]["anonymousId"]

    page = open_page(context, site.add("/cookie.html", collector.url, attrs=FAST + " data-cookie"))
    (view,) = [e for e in wait_events(collector, 3) if e["context"]["page"]["path"] == "/cookie.html"]
    cookies = {c["name"]: c for c in context.cookies(site.origin)}
    assert cookies["tw_a"]["value"] == view["anonymousId"] == stored(page)["tw_i"]["a"]
    assert cookies["tw_a"]["expires"] > time.time() + 300 * 86400
    page.evaluate("tw('optOut')")
    assert "tw_a" not in {c["name"] for c in context.cookies(site.origin)}


def test_big_flushes_are_split_under_64_kb(context: BrowserContext, site: Site, collector: Collector) -> None:
    page = open_page(context, site.add("/big.html", collector.url, attrs='data-interval="60000" data-batch="1000"'))
    page.evaluate("for (let i = 0; i < 40; i++) tw('track', 'Big', {i, blob: 'ü'.repeat(1500) + 'x'.repeat(1000)})")
    site.pages["/after.html"] = site.pages["/big.html"].replace('data-interval="60000"', FAST)
    page.goto(site.origin + "/after.html")  # beacons on the way out; whatever did not fit goes next
    events = wait_for(lambda: len(by_type(e := collector.events(), "track")) >= 40 and e, 30, "all 40 big events")
    assert sorted(e["properties"]["i"] for e in by_type(events, "track")) == list(range(40))
    bodies = collector.batch_sizes
    assert len(bodies) >= 3 and max(bodies) < 64 * 1024 and sum(bodies) > 160_000
    assert_once_each(events)


def test_events_are_shaped_so_the_collector_accepts_them(context: BrowserContext, site: Site, collector: Collector) -> None:
    # The collector refuses a whole batch for one bad event: the tracker never builds one.
    page = open_page(context, site.add("/shapes.html", collector.url, attrs='data-interval="300"'))
    page.evaluate("tw('track', 'Good 1'); tw('track', 'x'.repeat(300)); tw('track', 42, 'not an object')")
    page.evaluate("tw('identify', 'u'.repeat(300), ['not', 'an', 'object']); tw('track', 'Good 2')")
    events = wait_events(collector, 6)
    tracks = {e["event"]: e for e in by_type(events, "track")}
    assert sorted(tracks) == sorted(["Good 1", "x" * 256, "42", "Good 2"])
    assert tracks["42"]["properties"] == {"0": "n", "1": "o", "2": "t", "3": " ", "4": "a", "5": "n", "6": " ", "7": "o",
                                       "8": "b", "9": "j", "10": "e", "11": "c", "12": "t"}
    assert tracks["Good 2"]["userId"] == "u" * 256
    wait_for(lambda: queued(page) == [], what="an empty queue")


def test_failures_never_reach_the_page(context: BrowserContext, site: Site, collector: Collector) -> None:
    # The context fixture fails the test on any uncaught page error.
    page = open_page(context, site.add("/robust.html", collector.url, attrs=FAST))
    page.evaluate("const o = {}; o.self = o; tw('track', 'Cyclic', o)")
    page.evaluate("tw('noSuchMethod', 1); tw(); tw('track', 'Huge', {x: 'y'.repeat(40000)})")
    page.evaluate("tw('track', 'Still Working')")
    events = wait_events(collector, 2)
    assert [e.get("event") for e in by_type(events, "track")] == ["Still Working"]
def test_a_foreign_window_tw_does_not_break_the_page(context: BrowserContext, site: Site, collector: Collector) -> None:
    # Another script owns a global `tw` whose `q` is no call queue: the tracker's set-up fails
    # quietly (the context fixture fails the test on any uncaught page error).
    page = context.new_page()
    page.goto(site.add("/foreign.html", collector.url, attrs=FAST, before="window.tw = {q: 42};"))
    page.wait_for_load_state("load")
    settle(0.3)
    assert page.evaluate("window.tw.q") == 42 and collector.events() == []


def test_corrupt_storage_is_dropped_not_fatal(context: BrowserContext, site: Site, collector: Collector) -> None:
    # Another script on the site may write garbage into our keys; the tracker must keep working.
    page = open_page(context, site.add("/corrupt.html", collector.url, attrs=FAST))
    wait_events(collector, 1)
    page.evaluate("localStorage.setItem('tw:broken', '{not json'); localStorage.setItem('tw_b', '[')")
    page.evaluate("tw('track', 'After Corruption')")
    events = wait_events(collector, 2)
    assert [e["event"] for e in by_type(events, "track")] == ["After Corruption"]
    assert page.evaluate("localStorage.getItem('tw:broken')") is None


def test_tabs_sharing_the_queue_send_each_event_once(context: BrowserContext, site: Site, collector: Collector) -> None:
    url = site.add("/tabs.html", collector.url, attrs='data-interval="100" data-batch="3"')
    pages = [open_page(context, url) for _ in range(3)]
    for round_ in range(5):
        for i, page in enumerate(pages):
            page.evaluate(f"tw('track', 'Tab {i}', {{round: {round_}}})")
    events = wait_for(lambda: len(e := collector.events()) >= 18 and e, what="18 events")
    settle()
    events = collector.events()
    assert len(events) == 18
    assert_once_each(events)


def test_a_closed_tabs_events_are_adopted_by_another_tab(context: BrowserContext, site: Site, collector: Collector) -> None:
    url = site.add("/orphan.html", collector.url, attrs=FAST, self_hosted=True)
    collector.server.stop()  # the first tab cannot reach the collector (refused: nothing can have arrived)
    first = context.new_page()
    first.goto(url)
    first.wait_for_function("window.tw && window.tw.l")
    first.evaluate("tw('track', 'From A Closed Tab')")
    wait_for(lambda: backoff(first), what="a failed send")
    orphans = {e["messageId"] for e in queued(first)}
    assert len(orphans) == 2, "the page view and the track wait"
    first.close()
    collector.server.start()
    second = open_page(context, url)  # a new tab: its own id, its own events sent at once
    wait_for(lambda: len(collector.events()) == 1, what="the second tab's page view")
    # The closed tab's events wait 30 flush intervals (4.5 s here), then the open tab sends them.
    events = wait_for(lambda: len(e := collector.events()) == 3 and e, 30, "the adopted events")
    assert orphans <= {e["messageId"] for e in events}
    wait_for(lambda: queued(second) == [], what="an empty queue")
    settle()
    assert_once_each(collector.events())

"""The engine as a service on the embedded SQLite log: triggers, restart, reload, duplicates."""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

import orjson
from prometheus_client import REGISTRY

from tripwire.rules.service import RulesService, build_service
from tripwire.config import from_dict
from tripwire.envelope import format_time_ms
from tripwire.log import EVENTS, TRIGGERS
from tripwire.log.sqlite import SqliteLog
from tripwire.triggers import Trigger, trigger_id

from tests.fixtures.waiting import until

ABANDONED = """
rule "abandoned cart"
  when AddToCart as cart where cart.properties.price >= 20
  then no Checkout within 1s
  post crm with { sku: cart.properties.sku }
"""
BOUGHT = 'rule "bought" when AddToCart as a then Checkout within 1m post crm with { sku: a.properties.sku }\n'


def config_for(tmp_path: Path, **rules: Any) -> Any:
    rules_dir = tmp_path / "rules"
    rules_dir.mkdir(exist_ok=True)
    return from_dict({
        "data_dir": str(tmp_path / "data"),
        "rules": {"dir": str(rules_dir), "allowed_lateness_ms": 300, "grace": "1s", "reload_interval_ms": 100, **rules},
        "endpoints": {"crm": {"url": "http://127.0.0.1:9/hook"}},
    })


def event(name: str, key: str, mid: str, at_ms: int | None = None, **props: Any) -> tuple[bytes, bytes]:
    env = {"type": "track", "event": name, "anonymousId": key, "messageId": mid,
           "timestamp": format_time_ms(at_ms if at_ms is not None else int(time.time() * 1000)), "properties": props}
    return key.encode(), orjson.dumps(env)


async def triggers(log: SqliteLog) -> list[Trigger]:
    out = []
    for p, end in (await log.end_offsets(TRIGGERS)).items():
        out.extend(Trigger.from_json(r.value) for r in await log.read(TRIGGERS, p, 0, end or 1))
    return sorted(out, key=lambda t: t.fired_at)


async def wait_for(predicate: Any, timeout_s: float = 10.0) -> None:
    await until(predicate, timeout_s, f"the condition {predicate.__name__!r}")


async def handled_all(service: RulesService, log: SqliteLog) -> bool:
    """Every event appended so far was handled by ``service``: its triggers are on the topic."""
    ends = await log.end_offsets(EVENTS)
    handled = {tp.partition: offset for tp, offset in service.runner.handled().items() if tp.topic == EVENTS}
    return all(handled.get(p, 0) >= end for p, end in ends.items() if end)


async def test_absence_fires_on_the_wall_clock_with_full_envelopes(tmp_path: Path, sqlite_log: SqliteLog) -> None:
    config = config_for(tmp_path)
    (tmp_path / "rules" / "cart.rules").write_text(ABANDONED)
    service = build_service(config, sqlite_log)
    await service.start()
    try:
        await sqlite_log.append(EVENTS, [event("AddToCart", "u1", "m1", price=25, sku="S1"),
                                         event("AddToCart", "u2", "m2", price=25, sku="S2"),
                                         event("Checkout", "u2", "m3")])

        async def one() -> bool:
            return len(await triggers(sqlite_log)) >= 1
        await wait_for(one)

        async def nothing_pending() -> bool:  # u1 fired and u2's checkout came: nothing more can fire
            return await handled_all(service, sqlite_log) and service.engine.pending() == 0
        await wait_for(nothing_pending)
        (t,) = await triggers(sqlite_log)
        assert t.id == trigger_id("abandoned cart", "u1", ["m1"])
        assert t.endpoint == "crm" and t.key == "u1" and t.payload == {"sku": "S1"}
        assert t.events[0]["properties"] == {"price": 25, "sku": "S1"}  # the whole envelope, read back
        # where the time went, per phase (bench/rules.py prints the split); a trigger was built and saved
        assert {phase for phase, s in service.busy.items() if s > 0} == {"match", "triggers", "save"}
        assert REGISTRY.get_sample_value("tripwire_rules_busy_seconds_total", {"phase": "save"}) >= service.busy["save"]
    finally:
        await service.stop()


async def test_restart_resumes_pending_timer_without_duplicates(tmp_path: Path, sqlite_log: SqliteLog) -> None:
    config = config_for(tmp_path)
    (tmp_path / "rules" / "r.rules").write_text(ABANDONED.replace("within 1s", "within 2s") + BOUGHT)
    service = build_service(config, sqlite_log)
    await service.start()
    await sqlite_log.append(EVENTS, [event("AddToCart", "u1", "m1", price=25, sku="S1"),
                                     event("AddToCart", "u3", "m4", price=25, sku="S3")])
    await sqlite_log.append(EVENTS, [event("Checkout", "u3", "m5")])

    async def bought() -> bool:
        return len(await triggers(sqlite_log)) >= 1
    await wait_for(bought)
    await service.stop()  # the absence timer of u1 is pending

    service = build_service(config, sqlite_log)
    await service.start()
    try:
        async def both() -> bool:
            return len(await triggers(sqlite_log)) >= 2
        await wait_for(both)
        pending = service.engine.pending()  # u1's "bought", which waits for a checkout
        # the same events again (a client retry) never make a second trigger
        await sqlite_log.append(EVENTS, [event("AddToCart", "u3", "m4", price=25, sku="S3"),
                                         event("Checkout", "u3", "m5")])

        async def retries_handled() -> bool:
            return await handled_all(service, sqlite_log)
        await wait_for(retries_handled)
        got = await triggers(sqlite_log)
        assert sorted(t.rule for t in got) == ["abandoned cart", "bought"]
        assert service.engine.stats.duplicates == 2
        assert service.engine.pending() == pending == 1  # the retried cart started no run that fires later
    finally:
        await service.stop()


async def test_hot_reload_keeps_state_of_unchanged_rules_and_survives_a_broken_file(tmp_path: Path, sqlite_log: SqliteLog) -> None:
    from tripwire.rules import metrics

    config = config_for(tmp_path)
    rules_dir = tmp_path / "rules"
    (rules_dir / "a.rules").write_text(BOUGHT)
    (rules_dir / "b.rules").write_text('rule "signup" when Signup post crm\n')
    service = build_service(config, sqlite_log)
    await service.start()
    try:
        await sqlite_log.append(EVENTS, [event("AddToCart", "u1", "m1", sku="S1")])

        async def pending() -> bool:
            return service.engine.pending() == 1
        await wait_for(pending)
        errors_before = metrics.RELOAD_ERRORS.labels(file="a.rules")._value.get()
        # edit another file: the pending AddToCart of "bought" survives
        (rules_dir / "b.rules").write_text('rule "signup" when Signup where properties.plan == "pro" post crm\n')
        # break the file of "bought": its previous version keeps running
        (rules_dir / "a.rules").write_text(BOUGHT + 'rule "oops" when A then B post crm\n')

        async def reloaded() -> bool:
            return "signup" in {r.name for r in service.ruleset.plan.rules} and bool(service.ruleset.broken())
        await wait_for(reloaded)
        assert metrics.RELOAD_ERRORS.labels(file="a.rules")._value.get() == errors_before + 1
        await sqlite_log.append(EVENTS, [event("Checkout", "u1", "m2"), event("Signup", "u1", "m3", plan="free"),
                                         event("Signup", "u1", "m4", plan="pro")])

        async def fired() -> bool:
            return len(await triggers(sqlite_log)) >= 2
        await wait_for(fired)
        got = await triggers(sqlite_log)
        assert sorted(t.rule for t in got) == ["bought", "signup"]
        assert [t.events[-1]["messageId"] for t in got if t.rule == "signup"] == ["m4"]
        # fix the file: the new rule runs too
        (rules_dir / "a.rules").write_text(BOUGHT + 'rule "ok" when A then B within 1m post crm\n')

        async def fixed() -> bool:
            return "ok" in {r.name for r in service.ruleset.plan.rules} and not service.ruleset.broken()
        await wait_for(fixed)
    finally:
        await service.stop()


async def test_matched_events_from_earlier_batches_are_read_back_whole(tmp_path: Path, sqlite_log: SqliteLog) -> None:
    # A trigger carries every matched envelope; those of earlier batches come back from the log,
    # near ones in shared reads (gaps of 0 to 40 records here, over every partition).
    config = config_for(tmp_path)
    (tmp_path / "rules" / "seq.rules").write_text('rule "pair" when Viewed then Bought within 1h post crm\n')
    service = build_service(config, sqlite_log)
    await service.start()
    try:
        first, n = [], 0
        for i in range(40):
            first.append(event("Viewed", f"u{i}", f"v{i}", sku=f"S{i}"))
            first += [event("Noise", f"u{i}", f"n{n + j}") for j in range(i % 3 * 20 if i % 7 else i % 2)]
            n += 100
        await sqlite_log.append(EVENTS, first)

        async def read_all() -> bool:
            return service.engine.stats.events >= len(first)
        await wait_for(read_all)
        await sqlite_log.append(EVENTS, [event("Bought", f"u{i}", f"b{i}") for i in range(40)])

        async def all_fired() -> bool:
            return len(await triggers(sqlite_log)) >= 40
        await wait_for(all_fired)
        got = {t.key: t for t in await triggers(sqlite_log)}
        for i in range(40):
            viewed, bought = got[f"u{i}"].events
            assert viewed["messageId"] == f"v{i}" and viewed["properties"] == {"sku": f"S{i}"}
            assert bought["messageId"] == f"b{i}" and "properties" in bought
    finally:
        await service.stop()


async def test_an_engine_that_fails_mid_batch_saves_nothing_and_its_successor_fires_every_trigger(
    tmp_path: Path, sqlite_log: SqliteLog
) -> None:
    # The engine stopped on an error half-way through a batch, and on its way out saved its read positions
    # past that batch: the triggers its first events had matched were never written, not after a restart
    # either. A failed engine saves nothing; the next one replays the batch from the last save.
    config = config_for(tmp_path)
    (tmp_path / "rules" / "signup.rules").write_text('rule "signup" when Signup post crm\n')
    service = build_service(config, sqlite_log)
    process = service.engine.process

    def process_or_fail(partition: int, offset: int, env: dict[str, Any]) -> Any:
        if env.get("messageId") == "m-fails":
            raise RuntimeError("the engine cannot go on")
        return process(partition, offset, env)

    service.engine.process = process_or_fail  # type: ignore[method-assign]
    await service.start()
    try:
        # one key, so one partition and one batch: two matches, then the failure
        await sqlite_log.append(EVENTS, [event("Signup", "u1", "m1"), event("Signup", "u1", "m2"),
                                         event("Signup", "u1", "m-fails")])

        async def failed() -> bool:
            return service.failed
        await wait_for(failed)
    finally:
        await service.stop()
    assert await triggers(sqlite_log) == []
    successor = build_service(config, sqlite_log)
    await successor.start()
    try:
        async def all_three() -> bool:
            return len(await triggers(sqlite_log)) >= 3
        await wait_for(all_three)
        got = await triggers(sqlite_log)
        assert sorted(t.id for t in got) == sorted(trigger_id("signup", "u1", [m]) for m in ("m1", "m2", "m-fails"))
    finally:
        await successor.stop()

"""Exactly-once triggers across kill -9 of a ``tripwire engine`` subprocess (embedded SQLite state).

The engine process is killed with SIGKILL while absence timers are pending and
while triggers are being written; a new process resumes from the state it
committed. Every expected trigger appears exactly once on the triggers topic.
"""

from __future__ import annotations

import asyncio
import random
import sqlite3
import time
from pathlib import Path

import orjson

from tripwire.envelope import format_time_ms
from tripwire.log import EVENTS, TRIGGERS
from tripwire.log.sqlite import SqliteLog
from tripwire.triggers import Trigger

from tests.fixtures.waiting import until

from .procs import EngineProcess

RULES = """
rule "abandoned cart"
  when AddToCart as cart
  then no Checkout within 3s
  post crm with { sku: cart.properties.sku }

rule "bought"
  when AddToCart as cart
  then Checkout within 1m
  post crm
"""


def write_config(tmp_path: Path) -> Path:
    (tmp_path / "rules").mkdir()
    (tmp_path / "rules" / "shop.rules").write_text(RULES)
    cfg = tmp_path / "tripwire.toml"
    cfg.write_text(
        'data_dir = "data"\n[log]\npartitions = 4\n'
        '[rules]\ndir = "rules"\nallowed_lateness_ms = 300\ngrace = "1s"\n'
        '[endpoints.crm]\nurl = "http://127.0.0.1:9/hook"\n'
    )
    return cfg


def env(name: str, key: str, mid: str, **props: object) -> tuple[bytes, bytes]:
    e = {"type": "track", "event": name, "anonymousId": key, "messageId": mid,
         "timestamp": format_time_ms(int(time.time() * 1000)), "properties": props}
    return key.encode(), orjson.dumps(e)


async def read_triggers(log: SqliteLog) -> list[Trigger]:
    out = []
    for p, end in (await log.end_offsets(TRIGGERS)).items():
        if end:
            out.extend(Trigger.from_json(r.value) for r in await log.read(TRIGGERS, p, 0, end))
    return out


def committed_offsets(db: Path) -> int:
    if not db.exists():
        return 0
    conn = sqlite3.connect(db)
    try:
        return int(conn.execute("SELECT coalesce(sum(offset), 0) FROM partitions").fetchone()[0])
    except sqlite3.OperationalError:
        return 0
    finally:
        conn.close()


async def test_kill_9_loses_no_timer_and_duplicates_no_trigger(tmp_path: Path) -> None:
    cfg = write_config(tmp_path)
    state_db = tmp_path / "data" / "rules-state.db"
    log = SqliteLog(tmp_path / "data" / "log.db", partitions=4)
    await log.start()
    expected: set[tuple[str, str]] = set()
    appended = 0
    procs: list[EngineProcess] = []
    try:
        # 1. Carts whose absence timers are pending when the engine dies.
        engine = EngineProcess(cfg, tmp_path / "engine-1.log")
        procs.append(engine)
        engine.wait_output("rules engine started", 30)
        batch = [env("AddToCart", f"abandon-{i}", f"a{i}", sku=f"S{i}") for i in range(30)]
        batch += [env("AddToCart", f"buyer-{i}", f"b{i}") for i in range(10)]
        await log.append(EVENTS, batch)
        await log.append(EVENTS, [env("Checkout", f"buyer-{i}", f"c{i}") for i in range(10)])
        carts_at = time.time()  # no cart is newer
        appended += 50
        expected |= {("abandoned cart", f"abandon-{i}") for i in range(30)}
        expected |= {("bought", f"buyer-{i}") for i in range(10)}

        async def consumed() -> bool:
            return committed_offsets(state_db) >= appended
        await until(consumed, 20, "the first engine to commit every event", detail=lambda: committed_offsets(state_db))
        engine.kill9()  # 30 absence timers pending (deadline 3 s after the carts)
        assert not any(t.rule == "abandoned cart" for t in await read_triggers(log))

        # 2. Restart after the deadlines passed, with more traffic; kill it at random points.
        # Not a wait for a result: the case is deadlines that passed while no engine ran.
        await asyncio.sleep(max(0.0, carts_at + 3.5 - time.time()))
        rng = random.Random(4)
        for round_ in range(3):
            engine = EngineProcess(cfg, tmp_path / f"engine-r{round_}.log")
            procs.append(engine)
            keys = [f"r{round_}-{i}" for i in range(20)]
            await log.append(EVENTS, [env("AddToCart", k, f"{k}-cart", sku=k) for k in keys])
            await log.append(EVENTS, [env("Checkout", k, f"{k}-co") for k in keys[:10]])
            appended += 30
            expected |= {("abandoned cart", k) for k in keys[10:]} | {("bought", k) for k in keys[:10]}
            # a client retry of already-processed events: must never fire twice
            await log.append(EVENTS, [env("AddToCart", "buyer-0", "b0"), env("Checkout", "buyer-0", "c0")])
            appended += 2
            await asyncio.sleep(rng.uniform(1.0, 4.0))  # paces the fault: a kill at a random point
            engine.kill9()

        # 3. A last engine settles everything.
        engine = EngineProcess(cfg, tmp_path / "engine-final.log")
        procs.append(engine)

        missing = set(expected)

        async def settled() -> bool:
            missing.intersection_update(expected - {(t.rule, t.key) for t in await read_triggers(log)})
            return not missing
        await until(settled, 120, "every expected trigger", detail=lambda: f"missing {sorted(missing)[:5]}")

        async def replayed() -> bool:  # what the killed engines left is handled: a repeat is written by now
            return committed_offsets(state_db) >= appended
        await until(replayed, 120, "the last engine to commit every event", detail=lambda: committed_offsets(state_db))
        assert engine.terminate() == 0
        triggers = await read_triggers(log)
        ids = [t.id for t in triggers]
        assert len(ids) == len(set(ids)), "a trigger id was written twice"
        assert {(t.rule, t.key) for t in triggers} == expected
        assert len(triggers) == len(expected)
        cart = next(t for t in triggers if t.key == "abandon-7")
        assert cart.payload == {"sku": "S7"} and cart.events[0]["messageId"] == "a7"
    finally:
        for p in procs:
            if p.proc.poll() is None:
                p.kill9()
        await log.stop()

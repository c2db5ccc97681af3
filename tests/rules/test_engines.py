"""Two ``tripwire engine`` processes on one data_dir share the partitions; kill -9 loses and repeats nothing.

On the embedded log the members of the engine's consumer group split the partitions between
them (``tripwire run --engines 2`` starts two such processes). One is killed with SIGKILL
again and again while carts wait for their checkout: its partitions go to the other and come
back when it restarts; every expected trigger is on the triggers topic exactly once.
"""

from __future__ import annotations

import asyncio
import random
from pathlib import Path

from tripwire.log import EVENTS
from tripwire.log.sqlite import SqliteLog

from .procs import EngineProcess
from tests.fixtures.waiting import until

from .test_crash import committed_offsets, env, read_triggers, write_config


async def test_two_engine_processes_share_the_partitions_and_fire_each_trigger_once(tmp_path: Path) -> None:
    cfg = write_config(tmp_path)
    log = SqliteLog(tmp_path / "data" / "log.db", partitions=4)
    state = tmp_path / "data" / "rules-state.db"
    await log.start()
    procs: list[EngineProcess] = []
    expected: set[tuple[str, str]] = set()
    try:
        a = EngineProcess(cfg, tmp_path / "engine-a.log")
        b = EngineProcess(cfg, tmp_path / "engine-b.log")
        procs += [a, b]

        async def split() -> bool:
            got = a.last_assignment(), b.last_assignment()
            return all(got) and not set(got[0] or ()) & set(got[1] or ())
        await until(split, 30, "the engines to split the partitions",
                    detail=lambda: (a.last_assignment(), b.last_assignment()))
        appended = 0

        rng = random.Random(7)
        for round_ in range(4):
            keys = [f"r{round_}-{i}" for i in range(24)]
            await log.append(EVENTS, [env("AddToCart", k, f"{k}-cart", sku=k) for k in keys])
            await log.append(EVENTS, [env("Checkout", k, f"{k}-co") for k in keys[:12]])
            expected |= {("abandoned cart", k) for k in keys[12:]} | {("bought", k) for k in keys[:12]}
            appended += 36
            await asyncio.sleep(rng.uniform(0.3, 2.0))  # paces the fault: a kill at a random point
            a.kill9()  # its partitions go to b (after b looks at the group), their states from the last commit
            a = EngineProcess(cfg, tmp_path / f"engine-a{round_}.log")
            procs.append(a)

        missing = set(expected)

        async def settled() -> bool:
            missing.intersection_update(expected - {(t.rule, t.key) for t in await read_triggers(log)})
            return not missing
        await until(settled, 120, "every expected trigger", detail=lambda: f"missing {sorted(missing)[:5]}")

        async def handled() -> bool:  # every event handled and committed: a repeat is written by now
            return committed_offsets(state) >= appended
        await until(handled, 120, "the engines to commit every event", detail=lambda: committed_offsets(state))
        triggers = await read_triggers(log)
        ids = [t.id for t in triggers]
        assert len(ids) == len(set(ids)), "a trigger id was written twice"
        assert {(t.rule, t.key) for t in triggers} == expected
        # b may have done all the work alone: the last a must have started (on a loaded machine it can
        # still be importing) before its SIGTERM means "stop cleanly" rather than the default action
        a.wait_output("engine started", 120)
        assert a.terminate() == 0 and b.terminate() == 0
    finally:
        for p in procs:
            if p.proc.poll() is None:
                p.kill9()
        await log.stop()

"""Scale-out on a real Kafka-protocol broker (tansu): two ``tripwire engine`` processes share the
partitions; when one is killed the other takes its partitions over from the checkpoints, restores
the pending absence timers and fires them."""

from __future__ import annotations

import socket
import time
from pathlib import Path

import orjson

from tripwire.rules.state import CheckpointStore
from tests.fixtures.tansu import TansuBroker
from tripwire.envelope import format_time_ms
from tripwire.log import EVENTS, TRIGGERS
from tripwire.log.kafka import KafkaLog
from tripwire.log.partition import partition_for
from tripwire.triggers import Trigger

from tests.fixtures.waiting import until

from .procs import EngineProcess

RULES = """
rule "abandoned cart"
  when AddToCart as cart
  then no Checkout within 8s
  post crm with { sku: cart.properties.sku }
"""


async def read_triggers(log: KafkaLog) -> list[Trigger]:
    out = []
    for p, end in (await log.end_offsets(TRIGGERS)).items():
        pos = 0
        while pos < end:
            got = await log.read(TRIGGERS, p, pos, 1000)
            if not got:
                break
            out.extend(Trigger.from_json(r.value) for r in got)
            pos = got[-1].offset + 1
    return out


async def test_two_engines_split_partitions_and_the_survivor_fires_the_dead_ones_timers(tmp_path: Path, tansu: TansuBroker) -> None:
    (tmp_path / "rules").mkdir()
    (tmp_path / "rules" / "shop.rules").write_text(RULES)
    ckpt = tmp_path / "checkpoints"
    cfg = tmp_path / "tripwire.toml"
    cfg.write_text(
        f'[log]\nbackend = "kafka"\nkafka_bootstrap = "{tansu.bootstrap}"\npartitions = 4\n'
        f'[rules]\ndir = "rules"\nallowed_lateness_ms = 500\ngrace = "1s"\ncheckpoint_url = "{ckpt}"\ncheckpoint_interval_ms = 200\n'
        '[endpoints.crm]\nurl = "http://127.0.0.1:9/hook"\n'
    )
    log = KafkaLog(tansu.bootstrap, spill_dir=tmp_path / "spill", partitions=4)
    await log.start()
    a = EngineProcess(cfg, tmp_path / "a.log", env_overrides={"TRIPWIRE_DATA_DIR": str(tmp_path / "a")})
    b = None
    try:
        a.wait_output("partitions assigned", 60)
        b = EngineProcess(cfg, tmp_path / "b.log", env_overrides={"TRIPWIRE_DATA_DIR": str(tmp_path / "b")})
        b.wait_output("partitions assigned", 60)

        async def split() -> bool:
            pa, pb = a.last_assignment(), b.last_assignment()  # type: ignore[union-attr]
            return bool(pa) and bool(pb) and not set(pa) & set(pb) and set(pa) | set(pb) == {0, 1, 2, 3}  # type: ignore[arg-type]
        await until(split, 60, "the two engines to split the 4 partitions")
        owned_by_a = set(a.last_assignment() or [])

        keys = [f"visitor-{i}" for i in range(40)]
        now = int(time.time() * 1000)
        await log.append(EVENTS, [
            (k.encode(), orjson.dumps({"type": "track", "event": "AddToCart", "anonymousId": k, "messageId": f"m-{k}",
                                       "timestamp": format_time_ms(now), "properties": {"sku": k}}))
            for k in keys
        ])
        a_keys = {k for k in keys if partition_for(k.encode(), 4) in owned_by_a}
        assert a_keys and a_keys != set(keys)
        store = CheckpointStore(str(ckpt), "tripwire-rules")

        async def checkpointed() -> bool:
            total = 0
            for p in range(4):
                got = store.load(EVENTS, p)
                total += got[0] if got else 0
            return total >= len(keys)
        await until(checkpointed, 30, "both engines to checkpoint the carts")
        a.kill9()  # a's absence timers (8 s) are pending in its checkpoints only
        assert time.time() * 1000 < now + 8000, "the kill must happen before the deadline"

        async def all_fired() -> bool:
            return {t.key for t in await read_triggers(log)} >= set(keys)
        await until(all_fired, 90, "the survivor to fire every pending timer")
        triggers = await read_triggers(log)
        assert len({t.id for t in triggers}) == len(triggers) == len(keys)
        assert all(t.rule == "abandoned cart" and t.payload == {"sku": t.key} for t in triggers)
        assert set(b.last_assignment() or []) == {0, 1, 2, 3}
        assert "restored from checkpoint" in b.output()
        fired = {t.key: t.fired_at for t in triggers}
        assert all(fired[k] == format_time_ms(now + 8000) for k in keys)  # event time of the deadline
    finally:
        for proc in (a, b):
            if proc is not None and proc.proc.poll() is None:
                proc.kill9()
        await log.stop()


async def test_kafka_engine_killed_after_producing_does_not_produce_again(tmp_path: Path, tansu: TansuBroker) -> None:
    """kill -9 after a trigger was produced but before any checkpoint covered it: the restarted
    engine replays the same events and recognises the trigger already on the topic."""
    (tmp_path / "rules").mkdir()
    (tmp_path / "rules" / "shop.rules").write_text(
        'rule "bought" when AddToCart as cart then Checkout within 1m post crm with { sku: cart.properties.sku }\n')
    ckpt = tmp_path / "checkpoints"
    cfg = tmp_path / "tripwire.toml"
    cfg.write_text(
        f'[log]\nbackend = "kafka"\nkafka_bootstrap = "{tansu.bootstrap}"\npartitions = 2\n'
        f'[rules]\ndir = "rules"\nallowed_lateness_ms = 500\ngrace = "1s"\ncheckpoint_url = "{ckpt}"\ncheckpoint_interval_ms = 600000\n'
        '[endpoints.crm]\nurl = "http://127.0.0.1:9/hook"\n'
    )
    log = KafkaLog(tansu.bootstrap, spill_dir=tmp_path / "spill", partitions=2)
    await log.start()
    first = EngineProcess(cfg, tmp_path / "first.log", env_overrides={"TRIPWIRE_DATA_DIR": str(tmp_path / "d1")})
    second = None
    try:
        first.wait_output("partitions assigned", 60)
        now = int(time.time() * 1000)
        keys = [f"buyer-{i}" for i in range(6)]
        await log.append(EVENTS, [
            (k.encode(), orjson.dumps({"type": "track", "event": name, "anonymousId": k, "messageId": f"{name}-{k}",
                                       "timestamp": format_time_ms(now + dt), "properties": {"sku": k}}))
            for k in keys for name, dt in (("AddToCart", 0), ("Checkout", 10))
        ])

        async def produced() -> bool:
            return len(await read_triggers(log)) >= len(keys)
        await until(produced, 30, "the first engine to produce")
        first.kill9()  # no checkpoint was written (10-minute interval): everything is replayed
        assert not list(ckpt.rglob("*.ckpt"))

        second = EngineProcess(cfg, tmp_path / "second.log", env_overrides={"TRIPWIRE_DATA_DIR": str(tmp_path / "d2")})
        second.wait_output("partitions assigned", 90)
        # its status document (written after each handled batch, every few seconds) counts what it read
        status = ckpt / "tripwire-rules" / "status" / f"{socket.gethostname()}-{second.proc.pid}.json"

        def read_again() -> int:
            return int(orjson.loads(status.read_bytes())["events"]["read"]) if status.exists() else 0
        await until(lambda: read_again() >= 2 * len(keys), 60, "the second engine to read every event again",
                    detail=read_again)
        second.terminate()
        triggers = await read_triggers(log)
        assert sorted(t.key for t in triggers) == sorted(keys)  # each exactly once
        store = CheckpointStore(str(ckpt), "tripwire-rules")
        replayed = sum(got[0] for p in range(2) if (got := store.load(EVENTS, p)) is not None)
        assert replayed == 2 * len(keys)  # the second engine did read every event again
        assert "trigger(s) already written" in second.output()
    finally:
        for proc in (first, second):
            if proc is not None and proc.proc.poll() is None:
                proc.kill9()
        await log.stop()

"""Where did it go? What a timed-out wait of the fault-injection suite reports about what is missing.

A timeout on a slow machine and a loss look alike from the outside ("not in the
lake after 180 s"). These helpers say, for each missing messageId or trigger id,
where it is: in the log (partition and offset) and how far the consumer that
should have taken it got, or not in the log at all; and which processes are down
or were restarted. Everything is read, nothing written: the log through a
group-less reader, the lake's sink state, the dispatcher's store.
"""

from __future__ import annotations

import asyncio
from collections.abc import Iterable, Sequence
from pathlib import Path

import orjson

from tests.e2e.procs import Proc
from tripwire.log import EVENTS, TRIGGERS
from tripwire.log.kafka_reader import KafkaReader

SHOWN = 10  # missing items listed one by one; the rest are counted


async def _index(bootstrap: str, topic: str, field: str) -> dict[str, tuple[int, int]]:
    """``field`` of every record of ``topic`` -> (partition, offset)."""
    reader = KafkaReader(bootstrap, lambda name: f"tripwire.{name}", 5000, "tripwire-diagnosis")
    out: dict[str, tuple[int, int]] = {}
    try:
        for partition, end in (await reader.end_offsets(topic)).items():
            offset = 0
            while offset < end:
                records = await reader.read(topic, partition, offset, 1000)
                if not records:
                    break
                for r in records:
                    try:
                        value = orjson.loads(r.value).get(field)
                    except (orjson.JSONDecodeError, AttributeError):
                        continue
                    if isinstance(value, str):
                        out.setdefault(value, (partition, r.offset))
                offset = records[-1].offset + 1
    finally:
        await reader.stop()
    return out


def index(bootstrap: str, topic: str, field: str) -> dict[str, tuple[int, int]] | str:
    try:
        return asyncio.run(_index(bootstrap, topic, field))
    except Exception as exc:  # noqa: BLE001 - a diagnosis must not hide the failure it explains
        return f"the {topic} topic could not be read ({type(exc).__name__}: {exc})"


def services(procs: Iterable[Proc]) -> str:
    """Each process: running or its exit status, and the supervisor's restarts of its services."""
    lines = []
    for proc in procs:
        out = proc.output()
        state = "running" if proc.running else f"exited {proc.proc.returncode if proc.proc else '?'}"
        failures = [x for x in out.splitlines() if "restarting it in" in x]
        detail = f", {len(failures)} service failure(s), the last: {failures[-1].strip()[-200:]}" if failures else ""
        lines.append(f"{proc.name}: {state} (started {proc.starts}x){detail}")
    return "\n  ".join(lines)


def missing_events(missing: Sequence[str], bootstrap: str, lake_url: str, procs: Iterable[Proc]) -> str:
    """Where each acknowledged event that is not in the lake is: in the log, and how far the sink got."""
    from tripwire.sinks.lake import open_lake
    from tripwire.sinks.state import load_state

    found = index(bootstrap, EVENTS, "messageId")
    lake = open_lake(lake_url)
    resume: dict[int, int] = {}
    for p in range(8):
        state = load_state(lake, EVENTS, p)
        if state is not None:
            resume[p] = min([state.resume] + [c.first for c in state.pending])
    lines = [f"{len(missing)} acknowledged event(s) not in the lake"]
    for mid in sorted(missing)[:SHOWN]:
        if isinstance(found, str):
            where = found
        elif mid in found:
            p, offset = found[mid]
            if p not in resume:
                sink = f"the sink has written nothing of partition {p} yet (slow, not lost)"
            elif offset >= resume[p]:
                sink = f"the sink's journal resumes partition {p} at {resume[p]}: not written yet (slow, not lost)"
            else:
                sink = f"the sink's journal is past it (resumes at {resume[p]}): dropped as a repeat, or LOST"
            where = f"in the log at {EVENTS}/{p}@{offset}; {sink}"
        else:
            where = "NOT in the log (lost before it was acknowledged, or by the broker)"
        lines.append(f"{mid}: {where}")
    if len(missing) > SHOWN:
        lines.append(f"... and {len(missing) - SHOWN} more")
    lines.append("processes: " + services(procs))
    return "\n  ".join(lines)


def missing_triggers(missing: Sequence[str], bootstrap: str, store_path: Path, procs: Iterable[Proc]) -> str:
    """Where each expected trigger that never reached the receiver is: the triggers topic, the store."""
    from tripwire.webhooks import Store

    found = index(bootstrap, TRIGGERS, "id")
    store = Store(store_path) if store_path.exists() else None
    lines = [f"{len(missing)} expected trigger(s) never delivered"]
    try:
        for tid in sorted(missing)[:SHOWN]:
            row = store.get(tid) if store is not None else None
            if row is not None:
                where = f"in the dispatcher's store: {row.state}, {row.attempts} attempt(s), last status {row.last_status}"
            elif isinstance(found, str):
                where = found
            elif tid in found:
                p, offset = found[tid]
                where = f"on the triggers topic at {TRIGGERS}/{p}@{offset}, not in the dispatcher's store yet"
            else:
                where = "NOT on the triggers topic: never produced by an engine"
            lines.append(f"{tid}: {where}")
    finally:
        if store is not None:
            store.close()
    if len(missing) > SHOWN:
        lines.append(f"... and {len(missing) - SHOWN} more")
    lines.append("processes: " + services(procs))
    return "\n  ".join(lines)


def engine_offsets(checkpoints: Path, partitions: int) -> tuple[int | None, ...]:
    """The engines' checkpointed offset of each events partition (None: no checkpoint yet)."""
    from tripwire.rules.state import CheckpointStore

    store = CheckpointStore(str(checkpoints), "tripwire-rules")
    return tuple((c[0] if (c := store.load(EVENTS, p)) else None) for p in range(partitions))


def behind(bootstrap: str, checkpoints: Path, lake_url: str, store_path: Path) -> list[str]:
    """What has not yet handled everything on the log (empty when the stack is settled): an engine
    whose checkpoint is short of the events topic's end (triggers are produced before the checkpoint
    that covers them), the sink's state short of it (its rows are in files before its state moves),
    a trigger on the triggers topic the dispatcher has not delivered."""
    from tripwire.rules.state import CheckpointStore
    from tripwire.sinks.lake import LocalLake
    from tripwire.sinks.state import load_state
    from tripwire.webhooks import Store
    from tripwire.webhooks.store import DELIVERED

    async def ends() -> dict[int, int]:
        reader = KafkaReader(bootstrap, lambda name: f"tripwire.{name}", 5000, "tripwire-diagnosis")
        try:
            return await reader.end_offsets(EVENTS)
        finally:
            await reader.stop()

    out = []
    engine = CheckpointStore(str(checkpoints), "tripwire-rules")
    lake = LocalLake(lake_url)
    for p, end in asyncio.run(ends()).items():
        checkpoint = engine.load(EVENTS, p)
        if (checkpoint[0] if checkpoint else 0) < end:
            out.append(f"engine checkpoint of {EVENTS}/{p} at {checkpoint[0] if checkpoint else None} of {end}")
        state = load_state(lake, EVENTS, p)
        if (state.resume if state else 0) < end:
            out.append(f"sink state of {EVENTS}/{p} at {state.resume if state else None} of {end}")
    found = index(bootstrap, TRIGGERS, "id")
    if isinstance(found, str):
        return [*out, found]
    store = Store(store_path)
    try:
        undelivered = [tid for tid in found if (row := store.get(tid)) is None or row.state != DELIVERED]
    finally:
        store.close()
    if undelivered:
        out.append(f"{len(undelivered)} trigger(s) on the topic not delivered, e.g. {sorted(undelivered)[:3]}")
    return out

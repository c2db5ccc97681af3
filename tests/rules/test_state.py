"""Durable state: engine snapshots, the SQLite store, and checkpoints on a directory and on S3 (moto)."""

from __future__ import annotations

import pickle
from pathlib import Path

import pytest

from tripwire.rules.codec import key_fp
from tripwire.rules.engine import Engine
from tripwire.rules.errors import StateError
from tripwire.rules.state import CheckpointStore, PartitionDelta, SqliteStateStore
from tests.fixtures.s3 import S3Bucket

from .util import T0, ev, feed, ids, plan_of

RULES = """
rule "abandoned" when AddToCart as cart then no Checkout within 30s at most once per 1h post crm with { sku: cart.properties.sku }
rule "fan" when 3 PageView within 10m post crm
rule "seq" when A then 2 B within 1m then C within 1m post crm
"""


def busy_engine() -> Engine:
    engine = Engine(plan_of(RULES), 0)
    feed(engine, [
        ev("AddToCart", 0, key="k1", mid="cart1", sku="S1"),
        ev("PageView", 1, key="k1", mid="p1"), ev("PageView", 2, key="k1", mid="p2"),
        ev("A", 3, key="k2", mid="a"), ev("B", 4, key="k2", mid="b1"),
    ])
    return engine


def test_snapshot_restores_runs_counts_timers_and_seen_ids() -> None:
    original = busy_engine()
    restored = Engine(plan_of(RULES), 0)
    restored.restore_partition(0, original.snapshot_partition(0))
    assert restored.pending() == original.pending() == 3
    later = [ev("PageView", 5, key="k1", mid="p3"), ev("B", 6, key="k2", mid="b2"), ev("C", 7, key="k2", mid="c"),
             ev("PageView", 8, key="k1", mid="p1")]  # p1 again: remembered, ignored
    for engine in (original, restored):
        got = feed(engine, later, until_s=40)
        assert ids(got) == [["p1", "p2", "p3"], ["a", "b1", "b2", "c"], ["cart1"]]
        assert engine.stats.duplicates == 1


def test_a_capped_count_keeps_its_uncounted_events_through_a_snapshot() -> None:
    # A one-step count holds its events in the count-list form until it fires under a cap; then the
    # general form keeps the events not yet counted, and a snapshot must carry them as plain data.
    text = 'rule "fan" when 2 PageView within 10m at most 2 times per 1h post crm'
    original = Engine(plan_of(text), 3_600_000)  # the watermark stays an hour behind: nothing expires
    first = feed(original, [ev("PageView", 0, mid="p1"), ev("PageView", 1200, mid="p2"), ev("PageView", 1260, mid="p3")])
    assert ids(first) == [["p2", "p3"]]
    restored = Engine(plan_of(text), 3_600_000)
    restored.restore_partition(0, original.snapshot_partition(0))
    for engine in (original, restored):
        assert ids(feed(engine, [ev("PageView", 300, mid="p4")])) == [["p1", "p4"]]


def test_snapshot_of_a_removed_rule_is_dropped_on_restore() -> None:
    data = busy_engine().snapshot_partition(0)
    engine = Engine(plan_of('rule "fan" when 3 PageView within 10m post crm'), 0)
    engine.restore_partition(0, data)
    assert engine.pending() == 1


def test_state_refuses_anything_but_plain_data() -> None:
    class Evil:
        def __reduce__(self):  # type: ignore[no-untyped-def]
            return (print, ("owned",))

    with pytest.raises(StateError, match="unreadable"):
        Engine(plan_of(RULES), 0).restore_partition(0, pickle.dumps({"states": Evil()}))


def test_sqlite_store_commits_states_offsets_seen_and_outbox_together(tmp_path: Path) -> None:
    engine = Engine(plan_of(RULES), 0, track_dirty=True)
    feed(engine, [ev("AddToCart", 0, key="k1", mid="cart1", sku="S1")])
    store = SqliteStateStore(tmp_path / "state.db", "g")
    store.open()
    states, seen, cutoff = engine.take_changes(0)
    store.commit([PartitionDelta(0, 1, *engine.meta_of(0), states, seen, cutoff)], [("trg_1", b"k1", b"{}", 0)])
    store.close()

    store = SqliteStateStore(tmp_path / "state.db", "g")
    store.open()
    loaded = store.load(0)
    assert loaded.offset == 1 and _ids(loaded.seen) == {"cart1": T0}
    assert store.load(1).offset is None
    restored = Engine(plan_of(RULES), 0, track_dirty=True)
    restored.load_partition(0, loaded.max_t, loaded.watermark, loaded.seen,
                            ((sk, restored.decode_state(d)) for sk, d in loaded.states))
    assert ids(restored.advance_watermark(0, T0 + 31_000)) == [["cart1"]]
    assert store.outbox({1}) == []  # partition 1's engine does not forward partition 0's triggers
    (row,) = store.outbox({0})
    assert row[1:] == ("trg_1", b"k1", b"{}")
    store.forwarded([row[0]], {0: {0: 5, 1: 0}})
    assert store.outbox({0}) == [] and store.marks(0) == {0: 5, 1: 0} and store.marks(1) == {}
    # a state that became empty is deleted
    states, seen, cutoff = restored.take_changes(0)
    store.commit([PartitionDelta(0, 1, *restored.meta_of(0), states, seen, cutoff)], [])
    assert [sk for sk, _ in store.load(0).states] == [(restored.plan.rules[0].uid, "k1")]  # the cooldown memory
    store.close()


def roundtrip(store: CheckpointStore) -> None:
    assert store.load("events", 3) is None
    store.save("events", 3, 42, b"snapshot-bytes")
    store.save("events", 3, 43, b"newer")
    assert store.load("events", 3) == (43, b"newer")


def test_checkpoints_in_a_directory(tmp_path: Path) -> None:
    store = CheckpointStore(str(tmp_path / "ckpt"), "group-a")
    roundtrip(store)
    path = tmp_path / "ckpt" / "group-a" / "events-3.ckpt"
    path.write_bytes(b"garbage")
    with pytest.raises(StateError, match="not a tripwire checkpoint"):
        store.load("events", 3)


def test_checkpoints_on_s3(s3_bucket: S3Bucket) -> None:
    store = CheckpointStore(f"{s3_bucket.url}/engine", "group-a", s3_bucket.server.storage_options())
    roundtrip(store)
    assert s3_bucket.keys() == ["engine/group-a/events-3.ckpt"]
    engine = busy_engine()
    store.save("events", 0, 5, engine.snapshot_partition(0))
    offset, data = store.load("events", 0)  # type: ignore[misc]
    restored = Engine(plan_of(RULES), 0)
    restored.restore_partition(0, data)
    assert offset == 5 and restored.pending() == 3


def test_unreachable_s3_is_a_state_error(tmp_path: Path) -> None:
    store = CheckpointStore("s3://nope/x", "g", {"key": "k", "secret": "s", "client_kwargs": {"endpoint_url": "http://127.0.0.1:9"},
                                                 "retries": 0, "connect_timeout": 1})
    with pytest.raises(StateError, match="cannot be written"):
        store.save("events", 0, 1, b"x")


def test_compact_sequence_states_round_trip_through_snapshots_and_the_store(tmp_path: Path) -> None:
    # "A then B" rules without a cap keep a waiting run in compact form; saved and restored it
    # behaves exactly like the general form (absence fires, sequence completes, newer run wins).
    text = ('rule "gone" when AddToCart as cart then no Checkout within 30s post crm with { sku: cart.properties.sku }\n'
            'rule "pair" when A then B within 1m post crm\n')
    engine = Engine(plan_of(text), 0, track_dirty=True)
    feed(engine, [ev("AddToCart", 0, key="k1", mid="c1", sku="S1"), ev("AddToCart", 5, key="k1", mid="c2", sku="S2"),
                  ev("A", 6, key="k2", mid="a1")])
    assert engine.pending() == 2
    states, seen, cutoff = engine.take_changes(0)
    store = SqliteStateStore(tmp_path / "state.db", "g")
    store.open()
    store.commit([PartitionDelta(0, 3, *engine.meta_of(0), states, seen, cutoff)], [])
    loaded = store.load(0)
    store.close()
    from_store = Engine(plan_of(text), 0)
    from_store.load_partition(0, loaded.max_t, loaded.watermark, loaded.seen,
                              ((sk, from_store.decode_state(d)) for sk, d in loaded.states))
    from_snapshot = Engine(plan_of(text), 0)
    from_snapshot.restore_partition(0, engine.snapshot_partition(0))
    for e in (engine, from_store, from_snapshot):
        assert e.next_wake_ms() == T0 + 35_001  # the newer cart's deadline (the older one was replaced)
        got = feed(e, [ev("B", 7, key="k2", mid="b1"), ev("A", 8, key="k2", mid="a1")], until_s=36)
        assert ids(got) == [["a1", "b1"], ["c2"]] and got[1].payload == {"sku": "S2"}
        assert e.pending() == 0 and e.stats.duplicates == 1


def test_uuid_message_ids_are_held_compactly_and_given_back_unchanged(tmp_path: Path) -> None:
    # Canonical UUID messageIds are remembered as 128-bit ints (duplicate memory, compact states);
    # matches, stored seen rows and snapshots still carry the exact text; another spelling is another id.
    mid, upper = "1b4e28ba-2fa1-11d2-883f-0016d3cca427", "1B4E28BA-2FA1-11D2-883F-0016D3CCA427"
    text = 'rule "s" when A as a then B within 1m post crm with { sku: a.properties.sku }'
    engine = Engine(plan_of(text), 0, track_dirty=True)
    got = feed(engine, [ev("A", 0, mid=mid, sku="S1"), ev("A", 1, mid=mid), ev("B", 2, mid=upper)])
    assert ids(got) == [[mid, upper]] and got[0].payload == {"sku": "S1"}
    assert [(e[1], e[3]) for e in got[0].events] == [(T0, 0), (T0 + 2000, 2)]  # event time and log offset
    assert engine.stats.duplicates == 1
    states, seen, cutoff = engine.take_changes(0)
    assert [(m, t) for m, t, _ in seen] == [(mid, T0), (upper, T0 + 2000)]  # stored as given
    assert {fp for _, _, fp in seen} == {key_fp(None, "u1")}  # with their source and key's fingerprint
    # a waiting compact state with a UUID id, saved through the store and a snapshot
    feed(engine, [ev("A", 3, key="k2", mid="00000000-0000-4000-8000-000000000001", sku="S2")])
    states, seen, cutoff = engine.take_changes(0)
    store = SqliteStateStore(tmp_path / "state.db", "g")
    store.open()
    store.commit([PartitionDelta(0, 4, *engine.meta_of(0), states, seen, cutoff)], [])
    loaded = store.load(0)
    store.close()
    from_store = Engine(plan_of(text), 0)
    from_store.load_partition(0, loaded.max_t, loaded.watermark, [*loaded.seen, (mid, T0, key_fp(None, "u1"))],
                              ((sk, from_store.decode_state(d)) for sk, d in loaded.states))
    from_snapshot = Engine(plan_of(text), 0)
    from_snapshot.restore_partition(0, engine.snapshot_partition(0))
    for e in (engine, from_store, from_snapshot):
        later = [ev("A", 4, mid=mid), ev("B", 5, key="k2", mid="00000000-0000-4000-8000-000000000002")]
        got = feed(e, later)
        assert ids(got) == [["00000000-0000-4000-8000-000000000001", "00000000-0000-4000-8000-000000000002"]]
        assert got[0].payload == {"sku": "S2"} and got[0].events[0][1] == T0 + 3000
        assert e.stats.duplicates >= 1  # mid again: remembered (restored from text too)


def test_many_timers_per_millisecond_and_a_rebuild_of_superseded_ones_fire_every_deadline() -> None:
    # Timer registrations are grouped by rule per wake time, and superseded registrations are
    # dropped once they outnumber live states: neither may lose or repeat a deadline.
    text = ('rule "chain" when A then B within 1h then C within 30m then no D within 1s post crm\n'
            'rule "gone" when G then no Z within 2s post crm\n')
    engine = Engine(plan_of(text), 0)
    n, g = 25_000, 2_000
    events = [ev("G", 0, key=f"k{i}", mid=f"G{i}") for i in range(g)]
    for step, name in enumerate("ABC"):  # every key: A, B, C at the same millisecond (3 registrations)
        events += [ev(name, step, key=f"k{i}", mid=f"{name}{i}") for i in range(n)]
    got = feed(engine, events)
    assert got == [] and engine.pending() == n + g
    assert engine.partitions[0].registered < 3 * n  # superseded registrations were dropped
    assert engine.next_wake_ms() == T0 + 2001
    got = engine.advance_watermark(0, T0 + 2001)
    assert len(got) == g and {m.rule.name for m in got} == {"gone"} and {m.fired_at_ms for m in got} == {T0 + 2000}
    assert [m.key for m in got] == sorted(m.key for m in got)  # same deadline: (rule, key) order
    got = engine.advance_watermark(0, T0 + 3001)
    assert len(got) == n and {m.rule.name for m in got} == {"chain"} and {m.fired_at_ms for m in got} == {T0 + 3000}
    assert engine.pending() == 0 and engine.next_wake_ms() is None


def test_a_compact_state_keeps_its_time_and_offset_across_duplicate_memory_sweeps() -> None:
    # A waiting "A then B" run keeps its first event's time and offset in the duplicate memory,
    # which is swept as the watermark moves on: never below the longest rule window.
    engine = Engine(plan_of('rule "gone" when A as a then no B within 1h post crm with { x: a.properties.x }'), 0,
                    dedup_window_ms=1000)
    events = [ev("A", 0, key="k0", mid="a0", x=1)] + [ev("Other", 60 * i, key="k1") for i in range(1, 60)]
    events += [ev("A", 3599, key="k2", mid="a2", x=2)]
    assert feed(engine, events) == []
    got = engine.advance_watermark(0, T0 + 3_600_001)
    assert [(m.key, m.events[0][1], m.events[0][3], m.payload) for m in got] == [("k0", T0, 0, {"x": 1})]
    assert feed(engine, [ev("A", 4000, key="k3", mid="a0")]) == [] and engine.stats.duplicates == 0  # a0 is forgotten now
    got = engine.advance_watermark(0, T0 + 7_199_001)
    assert [(m.key, m.events[0][1], m.events[0][3], m.payload) for m in got] == [("k2", T0 + 3_599_000, 60, {"x": 2})]


def _rows(path: Path, table: str) -> int:
    import sqlite3

    with sqlite3.connect(path) as db:
        return int(db.execute(f"SELECT count(*) FROM {table}").fetchone()[0])  # noqa: S608


def test_sqlite_store_journals_each_commit_and_snapshots_when_the_journal_outgrows_the_last_snapshot(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    # One journal row per partition and commit; when the journal is as big as the last snapshot,
    # the commit carries a full snapshot instead and the journal before it goes. After every commit a
    # fresh store loads exactly what the engine holds (states, remembered ids, offset, watermark).
    import tripwire.rules.state

    monkeypatch.setattr(tripwire.rules.state, "_SNAPSHOT_MIN_BYTES", 1500)
    db = tmp_path / "state.db"
    engine = Engine(plan_of(RULES), 0, track_dirty=True)
    store = SqliteStateStore(db, "g")
    store.open()
    snapshots = journal_loads = 0
    offset = 0
    for batch in range(40):
        for i in range(5):
            kind = ("AddToCart", "PageView", "A", "B", "Checkout")[(batch + i) % 5]
            engine.process(0, offset, ev(kind, batch * 20 + i, key=f"k{(batch * 3 + i) % 7}", mid=f"m{offset}", sku=f"S{i}"))
            offset += 1
        states, seen, cutoff = engine.take_changes(0)
        snapshot = engine.snapshot_partition(0) if store.wants_snapshot(0) else None
        snapshots += snapshot is not None
        store.commit([PartitionDelta(0, offset, *engine.meta_of(0), states, seen, cutoff, snapshot)], [])
        journal_loads += _rows(db, "journal") > 0

        fresh = SqliteStateStore(db, "g")
        fresh.open()
        loaded = fresh.load(0)
        fresh.close()
        held = pickle.loads(engine.snapshot_partition(0))
        assert loaded.offset == offset and (loaded.max_t, loaded.watermark) == engine.meta_of(0)
        assert dict(loaded.states) == held["states"]
        again = Engine(plan_of(RULES), 0)  # the store may hold ids the engine moved to its long memory: load them
        again.load_partition(0, loaded.max_t, loaded.watermark, loaded.seen,
                             ((sk, again.decode_state(d)) for sk, d in loaded.states), loaded.old)
        assert _normal(again.snapshot_partition(0)) == _normal(engine.snapshot_partition(0))
    store.close()
    assert snapshots >= 2 and journal_loads >= 20
    assert _rows(db, "journal") < 40 and _rows(db, "snapshots") == 1


def _ids(seen: list[tuple[str, int, int]]) -> dict[str, int]:
    return {m: t for m, t, _ in seen}


def _normal(snapshot: bytes) -> dict[str, object]:
    """A snapshot with its id memory as one set of (minute, hash): an id kept exactly or already moved to
    the long memory is remembered alike (a loaded engine moves old ids at once, a running one on its sweep)."""
    from array import array

    from tripwire.rules.codec import compact_mid
    from tripwire.rules.dedup import BUCKET_MS, id_hash

    snap = pickle.loads(snapshot)
    ids = {(t // BUCKET_MS, id_hash(compact_mid(m), fp)) for m, t, fp in snap.pop("seen")}
    old = snap.pop("old")
    for minute, raw in old["buckets"].items():
        ids |= {(minute, h) for h in array("q", raw)}
    return {**snap, "ids": ids, "floor": old["floor"]}


def test_the_embedded_long_memory_is_in_the_state_database_and_survives_a_restart(tmp_path: Path) -> None:
    # Ids older than the recent span keep an 8-byte hash for the dedup window (a day): at thousands of
    # events a second that is gigabytes, which memory would hold for a day before it stopped growing, and
    # every snapshot would carry. The embedded engine writes them to rules-state.db with the commit that
    # moved them; a lookup reads them back; a restart finds them there; minutes past the window leave.
    import asyncio
    import sqlite3

    from tripwire.log.sqlite import SqliteLog
    from tripwire.rules.dedup import BUCKET_MS
    from tripwire.rules.durability import EmbeddedDurability

    text = 'rule "r" when A then B within 1m post crm'
    db = tmp_path / "rules-state.db"
    n = 3000  # over five minutes, keyed by 50 visitors
    events = [ev("A", i / 10, key=f"k{i % 50}", mid=f"m{i}") for i in range(n)]

    def stored() -> tuple[int, int]:
        with sqlite3.connect(db) as c:
            rows, size = c.execute("SELECT count(*), coalesce(sum(length(data)), 0) FROM old_ids").fetchone()
        return rows, size // 8

    async def engine_on(state: Path) -> tuple[Engine, EmbeddedDurability]:
        engine = Engine(plan_of(text), 0, track_dirty=True, dedup_window_ms=3_600_000)
        durable = EmbeddedDurability(engine, SqliteLog(tmp_path / "log.db", 1), SqliteStateStore(state, "g"))
        await durable.open()
        await durable.restore(0)
        return engine, durable

    def retry(engine: Engine, i: int) -> list[object]:
        before = engine.stats.duplicates
        got = engine.process(0, n + i, ev("A", i / 10, key=f"k{i % 50}", mid=f"m{i}"))
        assert engine.stats.duplicates == before + 1, f"m{i} was not recognised as a retry"
        return list(got)

    async def go() -> None:
        engine, durable = await engine_on(db)
        assert feed(engine, events, until_s=20 * 60) == []  # past the recent span: the ids moved to the long memory
        assert engine.partitions[0].seen == {} and len(engine.partitions[0].old) == n
        assert retry(engine, 7) == []  # moved but not committed yet: still recognised
        await durable.save({0: n}, [])
        assert stored() == (len({(T0 + i * 100) // BUCKET_MS for i in range(n)}), n)  # a chunk per minute, each id once
        snap = pickle.loads(engine.snapshot_partition(0))
        assert snap["old"] == {"floor": None, "stored": True}  # the snapshot does not carry them
        assert retry(engine, 1234) == [] and retry(engine, n - 1) == []  # read back from the database
        engine.process(0, 2 * n, ev("A", 100, key="k1", mid="new"))
        assert engine.stats.duplicates == 3  # a new id is no retry
        await durable.close()

        again, durable = await engine_on(db)  # a restart: the hashes are found in the database
        assert len(again.partitions[0].old) == n
        assert retry(again, 42) == [] and retry(again, 2999) == []
        again.advance_watermark(0, T0 + 2 * 3_600_000)  # past the dedup window: every minute leaves
        await durable.save({0: n}, [])
        assert len(again.partitions[0].old) == 0 and stored() == (0, 0)
        assert (T0 + 60 * BUCKET_MS) // BUCKET_MS not in again.partitions[0].old.counts  # type: ignore[attr-defined]
        await durable.close()

    asyncio.run(go())


def test_ids_forgotten_early_at_the_cap_stay_forgotten_after_a_restart(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    # Beyond dedup_max_ids the oldest minutes leave the database and the floor rises: events older than
    # it are too late (a retry there could not be told from a first delivery). The floor is committed
    # with the deletion: a restart from the last snapshot (taken before the eviction) and the journal
    # (whose ids are stored already, so they do not evict again) must not match such an event as new.
    import asyncio

    from tripwire.log.sqlite import SqliteLog
    from tripwire.rules.durability import EmbeddedDurability

    snapshot = [True]
    monkeypatch.setattr(SqliteStateStore, "wants_snapshot", lambda self, p: snapshot[0])

    async def engine_on() -> tuple[Engine, EmbeddedDurability]:
        engine = Engine(plan_of('rule "r" when A then B within 1m post crm'), 0, track_dirty=True,
                        dedup_window_ms=3_600_000, dedup_max_ids=1000)
        durable = EmbeddedDurability(engine, SqliteLog(tmp_path / "log.db", 1), SqliteStateStore(tmp_path / "s.db", "g"))
        await durable.open()
        await durable.restore(0)
        return engine, durable

    async def go() -> None:
        engine, durable = await engine_on()
        feed(engine, [ev("A", i / 10, key=f"k{i % 50}", mid=f"m{i}") for i in range(800)], until_s=20 * 60)
        assert engine.partitions[0].old.floor is None
        await durable.save({0: 800}, [])  # with a snapshot
        snapshot[0] = False
        feed(engine, [ev("A", 100 + i / 10, key=f"k{i % 50}", mid=f"n{i}") for i in range(800)], until_s=30 * 60)
        floor = engine.partitions[0].old.floor
        assert floor is not None and len(engine.partitions[0].old) <= 1000
        await durable.save({0: 1600}, [])  # a journal row
        await durable.close()
        again, durable = await engine_on()
        assert again.partitions[0].old.floor == floor
        again.process(0, 1600, ev("A", 1, key="k10", mid="m10"))  # before the floor: a retry or not, too late
        assert again.stats.too_late == 1 and again.stats.duplicates == 0
        await durable.close()

    asyncio.run(go())

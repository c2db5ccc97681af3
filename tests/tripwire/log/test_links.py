"""Identity links in the event log, checked the same way on every backend (memory, SQLite, Kafka on tansu).

A link given to ``append`` is durable with its records; the store keeps one
version per (userId, anonymousId) pair, the greater (trust, time), whatever the
order versions arrive in; ``forget_links`` deletes a user's links; and on Kafka a
link appended through one log object is known to another (another collector)
once it has read the compacted identities topic.
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Callable
from pathlib import Path

import pytest

from tripwire.identity import CLAIMED, TRUSTED, Link, best
from tripwire.log import EVENTS, EventLog
from tripwire.log.kafka import KafkaLog
from tripwire.log.memory import MemoryLog
from tripwire.log.sqlite import SqliteLog

from .helpers import read_all, wait_for

PARTITIONS = 4


@pytest.fixture(params=["memory", "sqlite", "kafka"])
def make_log(request: pytest.FixtureRequest, tmp_path: Path) -> Callable[[str], EventLog]:
    """A factory of log objects on one store (one file, one broker): each call is another process's view."""
    if request.param == "memory":
        shared = MemoryLog(PARTITIONS)
        return lambda name: shared
    if request.param == "sqlite":
        return lambda name: SqliteLog(tmp_path / "log.db", PARTITIONS)
    broker = request.getfixturevalue("tansu")
    return lambda name: KafkaLog(broker.bootstrap, spill_dir=tmp_path / name / "spill", partitions=PARTITIONS,
                                 identities_dir=tmp_path / name / "identities")


@pytest.fixture
async def log(make_log: Callable[[str], EventLog]) -> AsyncIterator[EventLog]:
    async with make_log("one") as backend:
        yield backend


def link(user: str, anon: str, trust: str = CLAIMED, at: int = 1000) -> Link:
    return Link(user, anon, trust, at, "shop")


async def test_links_are_stored_with_the_records_of_the_append(log: EventLog) -> None:
    await log.append(EVENTS, [(b"a1", b'{"n": 1}')], [link("u1", "a1")])
    await log.append(EVENTS, [], [link("u2", "a2", TRUSTED)])  # links alone are fine too
    assert await log.links(["u1", "u2", "nobody"]) == {"u1": [link("u1", "a1")], "u2": [link("u2", "a2", TRUSTED)]}
    assert [r.value for r in await read_all(log, EVENTS)] == [b'{"n": 1}']
    assert await log.links([]) == {}


async def test_a_pair_keeps_its_greatest_trust_then_time_whatever_the_order(log: EventLog) -> None:
    trusted_old, claimed_new = link("u", "a", TRUSTED, 1000), link("u", "a", CLAIMED, 9000)
    await log.append(EVENTS, [], [claimed_new])
    await log.append(EVENTS, [], [trusted_old])
    await log.append(EVENTS, [], [claimed_new])  # a claim never downgrades a trusted pair
    assert await log.links(["u"]) == {"u": [trusted_old]}
    newer = link("u", "a", TRUSTED, 5000)
    await log.append(EVENTS, [], [newer, trusted_old])
    assert await log.links(["u"]) == {"u": [newer]}


async def test_a_person_with_several_devices_is_keyed_by_the_best_link(log: EventLog) -> None:
    await log.append(EVENTS, [], [link("u", "laptop", TRUSTED, 1000), link("u", "phone", TRUSTED, 2000),
                                  link("u", "forger", CLAIMED, 9000)])
    links = (await log.links(["u"]))["u"]
    assert sorted(x.anonymous_id for x in links) == ["forger", "laptop", "phone"]
    assert best(links) == link("u", "phone", TRUSTED, 2000)  # the newest trusted; the newer claim does not win


async def test_forget_links_deletes_every_link_of_the_user(log: EventLog) -> None:
    await log.append(EVENTS, [], [link("u", "a1"), link("u", "a2", TRUSTED), link("other", "a1")])
    gone = await log.forget_links("u")
    assert sorted(x.anonymous_id for x in gone) == ["a1", "a2"]
    assert await log.links(["u", "other"]) == {"other": [link("other", "a1")]}
    assert await log.forget_links("u") == []


async def test_links_survive_a_restart_and_reach_another_process(make_log: Callable[[str], EventLog]) -> None:
    """SQLite: another connection to the file; Kafka: another log object reading the identities topic."""
    async with make_log("collector-1") as first:
        await first.append(EVENTS, [(b"a1", b"{}")], [link("u1", "a1", TRUSTED)])
        await first.append(EVENTS, [], [link("u2", "a2")])
        async with make_log("collector-2") as second:
            want = {"u1": [link("u1", "a1", TRUSTED)], "u2": [link("u2", "a2")]}
            assert await second.links(["u1", "u2"]) == want  # the first call has read the topic to its end
            # learned at collector 1 later: known at collector 2 once it has read it
            await first.append(EVENTS, [], [link("u3", "a3")])
            await wait_for(lambda: _has(second, "u3"), 30, "collector 2 to know the link collector 1 learned")
            # and forgotten through collector 2: gone at collector 1 too
            await second.forget_links("u1")
            await wait_for(lambda: _lacks(first, "u1"), 30, "collector 1 to see the links of u1 deleted")
    async with make_log("collector-3") as third:
        assert set(await third.links(["u1", "u2", "u3"])) == {"u2", "u3"}


async def _has(log: EventLog, user: str) -> bool:
    return user in await log.links([user])


async def _lacks(log: EventLog, user: str) -> bool:
    return user not in await log.links([user])


async def test_sqlite_writes_links_in_the_transaction_of_their_events(tmp_path: Path) -> None:
    """One group commit holds the request's events and its links: an acknowledged identify's link is durable."""
    async with SqliteLog(tmp_path / "log.db", PARTITIONS) as log:
        before = log.commits
        await log.append(EVENTS, [(b"a1", b"{}"), (b"a2", b"{}")], [link("u1", "a1"), link("u2", "a2")])
        assert log.commits == before + 1
    async with SqliteLog(tmp_path / "log.db", PARTITIONS) as log:
        assert set(await log.links(["u1", "u2"])) == {"u1", "u2"}


async def test_kafka_copies_of_the_links_are_files_of_their_process_removed_on_stop(
        tmp_path: Path, tansu: object) -> None:
    log = KafkaLog(tansu.bootstrap, spill_dir=tmp_path / "spill", identities_dir=tmp_path / "ids")  # type: ignore[attr-defined]
    async with log:
        await log.append(EVENTS, [], [link("u", "a")])
        assert await log.links(["u"])
        assert [p.name for p in (tmp_path / "ids").glob("*.db")] != []
        assert await log.ready()
    assert list((tmp_path / "ids").glob("*.db*")) == []

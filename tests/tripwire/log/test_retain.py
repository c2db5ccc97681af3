"""What the Kafka log keeps of acknowledged records: memory, journal, epochs, limits."""

from __future__ import annotations

import time
from pathlib import Path

from tripwire.log.epoch import EpochBook, Mark
from tripwire.log.retain import Retained


def book_at(epoch: int, partitions: int = 2) -> EpochBook:
    book = EpochBook()
    for p in range(partitions):
        book.set("t.events", p, Mark(epoch, 0, f"id{epoch}"))
    return book


def kept(epoch: int, *values: bytes, at: float | None = None, partition: int = 0):
    now = time.time() if at is None else at
    return [(now, "t.events", partition, epoch, b"k", v) for v in values]


def test_records_of_a_lost_epoch_come_back_in_order_and_only_once(tmp_path: Path) -> None:
    r = Retained(300, 1 << 20)
    r.open(tmp_path)
    r.add(kept(0, b"a", b"b") + kept(0, b"c", partition=1))
    assert r.take_stale(book_at(0)) == []  # the broker still has epoch 0
    assert r.take_stale(book_at(1)) == [("t.events", b"k", b"a"), ("t.events", b"k", b"b"), ("t.events", b"k", b"c")]
    assert r.take_stale(book_at(1)) == [] and len(r) == 0 and r.bytes == 0
    r.close()


def test_the_journal_outlives_the_process_but_not_the_window(tmp_path: Path) -> None:
    r = Retained(60, 1 << 20)
    r.open(tmp_path)
    r.add(kept(0, b"old", at=time.time() - 120))  # already past the window when the next run starts
    r.add(kept(0, b"a", b"b"))
    # no close(): a kill -9 leaves what was flushed to the OS
    again = Retained(60, 1 << 20)
    again.open(tmp_path)
    assert [v for _, _, v in again.take_stale(book_at(1))] == [b"a", b"b"]
    r.close()
    again.close()


def test_a_record_written_again_in_a_new_epoch_is_not_replayed_from_its_old_copy(tmp_path: Path) -> None:
    r = Retained(300, 1 << 20)
    r.open(tmp_path)
    r.add(kept(0, b"a", b"b"))
    assert len(r.take("t.events")) == 2  # the broker lost them: the log produces them again...
    r.add(kept(1, b"a"))  # ...and Kafka acknowledges "a" in epoch 1 before the process dies
    again = Retained(300, 1 << 20)
    again.open(tmp_path)
    assert [v for _, _, v in again.take_stale(book_at(1))] == [b"b"]
    assert len(again) == 1  # "a" of epoch 1 stays kept
    r.close()
    again.close()


def test_over_the_byte_limit_the_oldest_go_first_and_are_counted(tmp_path: Path) -> None:
    r = Retained(300, 1000)
    r.open(tmp_path)
    for i in range(20):
        r.add(kept(0, b"x" * 100 + bytes([i])))
    n = len(r)
    assert 0 < n < 20 and r.bytes <= 1000 and r.dropped == 20 - n
    assert [v[-1] for _, _, v in r.take("t.events")] == list(range(20 - n, 20))
    r.close()


def test_expired_journal_files_are_deleted(tmp_path: Path) -> None:
    r = Retained(10, 1 << 20)  # a file per second
    r.open(tmp_path)
    r.add(kept(0, b"a", at=time.time() - 30))
    r.add(kept(0, b"b", at=time.time() - 20))
    r.add(kept(0, b"c"))
    files = sorted(p.name for p in tmp_path.glob("*.ret"))
    assert len(files) == 3
    r.expire()
    # the first file ends where the second starts, 20 s ago: past the window. The second may
    # hold records up to where the third starts (now), so it stays until that is 10 s ago too.
    assert len(r) == 1 and sorted(p.name for p in tmp_path.glob("*.ret")) == files[1:]
    r.close()

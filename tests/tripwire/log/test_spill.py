"""The spill buffer on its own: order, bounds, crash-safety, slots."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

from tripwire.log import LogUnavailable
from tripwire.log.spill import Spill, SpillCorrupt, SpillFull, encode


def recs(start: int, n: int) -> list[tuple[str, bytes | None, bytes]]:
    return [("tripwire.events", None if i % 5 == 0 else b"k%d" % (i % 3), b"v%d" % i) for i in range(start, start + n)]


def drain(spill: Spill) -> list[tuple[str, bytes | None, bytes]]:
    out = []
    while (seg := spill.oldest()) is not None:
        out.extend(spill.read(seg))
        spill.remove(seg)
    return out


def test_records_come_back_in_order_across_segments(tmp_path: Path) -> None:
    spill = Spill(tmp_path, 1_000_000, segment_bytes=200)
    spill.open()
    for i in range(0, 50, 5):
        spill.append(recs(i, 5))
    assert spill.depth == 50
    assert len(list(spill.dir.glob("*.spill"))) > 3  # type: ignore[union-attr]
    # appends while forwarding land behind the sealed segment
    seg = spill.oldest()
    assert seg is not None
    spill.append(recs(50, 5))
    first = spill.read(seg)
    spill.remove(seg)
    assert first + drain(spill) == recs(0, 55)
    assert spill.depth == 0 and spill.size == 0
    assert list(spill.dir.glob("*.spill")) == []  # type: ignore[union-attr]
    spill.close()


def test_full_spill_refuses_with_retry_after(tmp_path: Path) -> None:
    spill = Spill(tmp_path, len(encode(recs(0, 3))), retry_after_s=7)
    spill.open()
    spill.append(recs(0, 3))
    with pytest.raises(SpillFull) as info:
        spill.append(recs(3, 1))
    assert isinstance(info.value, LogUnavailable)
    assert info.value.retry_after_s == 7
    assert "full" in str(info.value)
    assert spill.depth == 3
    drain(spill)
    spill.append(recs(3, 1))  # room again once forwarded
    assert spill.depth == 1
    spill.close()


def test_reopen_keeps_records_and_truncates_a_torn_tail(tmp_path: Path) -> None:
    spill = Spill(tmp_path, 1_000_000)
    spill.open()
    spill.append(recs(0, 10))
    slot = spill.dir
    assert slot is not None
    spill.close()
    (segment,) = slot.glob("*.spill")
    good = segment.stat().st_size
    with segment.open("ab") as f:  # a write cut short by a crash (never acknowledged)
        f.write(encode(recs(10, 1))[:-3])

    again = Spill(tmp_path, 1_000_000)
    again.open()
    assert again.dir == slot
    assert again.depth == 10
    assert segment.stat().st_size == good
    again.append(recs(10, 2))  # goes to a new segment behind the old one
    assert drain(again) == recs(0, 12)
    again.close()


def test_damage_before_the_tail_is_an_error_not_a_skip(tmp_path: Path) -> None:
    spill = Spill(tmp_path, 1_000_000, segment_bytes=100)
    spill.open()
    for i in range(6):
        spill.append(recs(i, 1))
    slot = spill.dir
    assert slot is not None
    spill.close()
    first = sorted(slot.glob("*.spill"))[0]
    data = bytearray(first.read_bytes())
    data[12] ^= 0xFF
    first.write_bytes(bytes(data))
    with pytest.raises(SpillCorrupt, match=first.name):
        Spill(tmp_path, 1_000_000).open()


def test_each_process_claims_its_own_slot(tmp_path: Path) -> None:
    a, b = Spill(tmp_path, 10_000), Spill(tmp_path, 10_000)
    a.open()
    b.open()
    assert a.dir != b.dir
    a.append(recs(0, 2))
    b.append(recs(2, 3))
    a.close()
    c = Spill(tmp_path, 10_000)
    c.open()  # takes over a's slot and so its records
    assert c.dir == tmp_path / "0"
    assert drain(c) == recs(0, 2)
    b.close()
    c.close()


def test_orphaned_slots_are_adopted_and_forwarded_first(tmp_path: Path) -> None:
    # two workers spilled, then the service came back with one worker
    a, b = Spill(tmp_path, 10_000), Spill(tmp_path, 10_000)
    a.open()
    b.open()
    a.append(recs(0, 2))
    b.append(recs(2, 3))
    a.close()
    b.close()

    c = Spill(tmp_path, 10_000)
    c.open()
    assert c.dir == tmp_path / "0"
    assert c.depth == 5
    c.append(recs(5, 1))  # new records queue behind everything adopted
    # the adopted slot is locked by c now: a newcomer neither claims nor adopts it
    d = Spill(tmp_path, 10_000)
    d.open()
    assert d.dir == tmp_path / "2" and d.depth == 0
    d.close()
    got = drain(c)
    assert sorted(got, key=lambda r: r[2]) == recs(0, 6)
    assert got[-1] == recs(5, 1)[0]
    assert got[:3] == recs(2, 3)  # the orphan's records first (slot 1 adopted, ours after)
    assert not list(tmp_path.glob("*/*.spill"))
    c.close()


_DISK_FULL_CHILD = """
import resource, signal, sys
from tripwire.log import LogUnavailable
from tripwire.log.spill import Spill, SpillFull

signal.signal(signal.SIGXFSZ, signal.SIG_IGN)  # a write over the limit fails with EFBIG instead
spill = Spill(sys.argv[1], 10_000_000)
spill.open()
resource.setrlimit(resource.RLIMIT_FSIZE, (5000, 5000))  # the disk is full at 5000 bytes per file
acked = 0
try:
    while True:
        spill.append([("tripwire.events", b"k", b"v" * 300)])
        acked += 1
except SpillFull:
    sys.exit("the byte bound was hit, not the disk")
except LogUnavailable as exc:
    assert "cannot write spill segment" in str(exc), exc
print(acked, spill.depth, spill.size)
"""


def test_a_failing_disk_refuses_without_leaving_half_a_record(tmp_path: Path) -> None:
    repo = Path(__file__).resolve().parents[3]
    out = subprocess.run(
        [sys.executable, "-c", _DISK_FULL_CHILD, str(tmp_path)],
        capture_output=True, text=True, timeout=60, cwd=repo, check=True,
    ).stdout.split()
    acked, depth, size = map(int, out)
    assert acked == depth > 0
    (segment,) = tmp_path.glob("*/*.spill")
    assert segment.stat().st_size == size  # the failed write was cut back off
    again = Spill(tmp_path, 10_000_000)
    again.open()
    assert again.depth == acked
    assert drain(again) == [("tripwire.events", b"k", b"v" * 300)] * acked
    again.close()

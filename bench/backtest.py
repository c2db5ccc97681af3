"""Backtest memory and speed: ``tripwire rules backtest`` in a subprocess against reading the same input.

    python bench/backtest.py [--events 2000000] [--lake-events 500000] [--days 7] [--only jsonl|lake]

1. Writes ``--events`` generated envelopes (shoppers' sessions over ``--days`` days: page views,
   product views, carts, checkouts; about 600 bytes each, as the collector stores them) to a JSONL
   file in event-time order (an export), and the same events shuffled.
2. Baseline, in a child process: read the file line by line and ``orjson``-decode every line.
   Backtest, in a child process: ``tripwire rules backtest`` of one rule ("AddToCart then
   Checkout within 30s") over the file, with ``--out``. For each: wall time, events/s and the
   child's peak RSS (``os.wait4``'s rusage). Also the backtest of the first half of the file
   (memory must stay flat as history grows), of the shuffled file (sorted out of core first; its
   triggers must be the same), and what the progress bar said (its last events/s).
3. The lake: ``--lake-events`` such events over the same days, in arrival order (event time plus a random
   delivery delay, so files are not quite in time order), written by the sink's ``LakeWriter``
   over 4 log partitions; baseline: read every file with pyarrow and turn each row into a dict;
   backtest ``--lake``.

Data is written by child processes too: a child's peak RSS counts its parent's at the fork (Linux
records the old address space's high-water mark at exec), so this process stays small.

Prints figures and ratios; asserts nothing (the machine is shared: run it twice to see the noise).
Target (issue 16): peak RSS <= 300 MB over 2,000,000 events, flat as the history grows.
"""

from __future__ import annotations

import argparse
import heapq
import os
import random
import re
import subprocess
import sys
import tempfile
import time
import uuid
from collections.abc import Iterator
from pathlib import Path

import orjson

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from tripwire.envelope import format_time_ms  # noqa: E402

T0 = 1_767_225_600_000  # 2026-01-01T00:00:00Z
RULE = 'rule "cart then checkout"\n  when AddToCart as cart\n  then Checkout within 30s\n  post crm with { sku: cart.properties.sku }\n'
CATEGORIES = ["shoes", "hats", "shirts", "bags", "socks", "coats", "watches", "belts"]


def sessions(n: int, days: int, seed: int = 11) -> Iterator[dict[str, object]]:
    """``n`` envelopes in event-time order: sessions of 2-12 events a few seconds apart, overlapping."""
    rng = random.Random(seed)
    span = days * 86_400_000
    mean_len = 7
    gap = span / (n / mean_len)  # between session starts
    pending: list[tuple[int, int, dict[str, object]]] = []  # (time, sequence, envelope): a heap
    seq = 0
    made = 0
    start = float(T0)
    while made < n:
        start += rng.expovariate(1 / gap)
        s = int(start)
        while pending and pending[0][0] <= s:
            yield heapq.heappop(pending)[2]
        key = f"anon-{rng.randrange(200_000):07d}"
        cat = rng.choice(CATEGORIES)
        t = s
        cart = False
        for _ in range(min(rng.randrange(2, 13), n - made)):
            r = rng.random()
            sku = f"{cat}-{rng.randrange(50)}"
            props: dict[str, object]
            if cart and r < 0.35:
                name, props = "Checkout", {"total": rng.randrange(5, 400)}
                cart = False
            elif r < 0.5:
                name, props = "PageView", {"category": cat, "title": f"{cat} page"}
            elif r < 0.75:
                name, props = "ProductViewed", {"category": cat, "sku": sku, "price": rng.randrange(5, 200)}
            else:
                name, props = "AddToCart", {"sku": sku, "category": cat, "price": rng.randrange(5, 200), "quantity": 1}
                cart = True
            delay = int(rng.expovariate(1 / 400))
            env: dict[str, object] = {"type": "track", "event": name, "anonymousId": key, "messageId": str(uuid.UUID(int=rng.getrandbits(128))),
                   "timestamp": format_time_ms(t), "sentAt": format_time_ms(t + delay // 2),
                   "receivedAt": format_time_ms(t + delay), "properties": props,
                   "context": {"page": {"path": f"/c/{cat}/{sku}", "url": f"https://shop.example/c/{cat}/{sku}",
                                        "referrer": "https://www.google.com/", "title": f"{cat} | Shop"},
                               "userAgent": "Mozilla/5.0 (X11; Linux x86_64) AppleWebKit/537.36 (KHTML, like Gecko) "
                                            "Chrome/131.0 Safari/537.36",
                               "ip": "203.0.113.0", "locale": "en-GB", "library": {"name": "tripwire.js", "version": "1.0.0"},
                               "screen": {"width": 1440, "height": 900}, "timezone": "Europe/London"},
                   "source": "web"}
            heapq.heappush(pending, (t, seq, env))
            seq += 1
            made += 1
            t += rng.randrange(1000, 25_000)
    while pending:
        yield heapq.heappop(pending)[2]


def write_files(tmp: Path, n: int, days: int) -> tuple[Path, Path, Path]:
    """The sorted file, its first half, and a shuffle of it (bucketed, so the bench never holds the file)."""
    sorted_path, half_path, shuffled_path = tmp / "events.jsonl", tmp / "half.jsonl", tmp / "shuffled.jsonl"
    rng = random.Random(5)
    buckets = [open(tmp / f"bucket-{i}", "wb") for i in range(16)]  # noqa: SIM115
    with open(sorted_path, "wb") as out, open(half_path, "wb") as half:
        for i, env in enumerate(sessions(n, days)):
            line = orjson.dumps(env) + b"\n"
            out.write(line)
            if i < n // 2:
                half.write(line)
            buckets[rng.randrange(16)].write(line)
    with open(shuffled_path, "wb") as out:
        for i, b in enumerate(buckets):
            b.close()
            path = tmp / f"bucket-{i}"
            lines = path.read_bytes().splitlines(keepends=True)
            rng.shuffle(lines)
            out.writelines(lines)
            path.unlink()
    return sorted_path, half_path, shuffled_path


BASELINE_JSONL = """
import sys, orjson
n = 0
with open(sys.argv[1], "rb") as f:
    for line in f:
        orjson.loads(line)
        n += 1
print(n)
"""

BASELINE_LAKE = """
import sys, pyarrow.parquet as pq
from pathlib import Path
n = 0
for f in sorted(Path(sys.argv[1]).glob("date=*/*.parquet")):
    for batch in pq.ParquetFile(f).iter_batches(batch_size=4096):
        n += len(batch.to_pylist())
print(n)
"""


def child(argv: list[str]) -> tuple[float, float, str, str]:
    """(wall seconds, peak RSS MB, stdout, stderr) of one child process."""
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    with tempfile.TemporaryFile() as out, tempfile.TemporaryFile() as err:
        t = time.perf_counter()
        proc = subprocess.Popen(argv, stdout=out, stderr=err, env=env)
        _, status, usage = os.wait4(proc.pid, 0)
        wall = time.perf_counter() - t
        proc.returncode = os.waitstatus_to_exitcode(status)
        out.seek(0)
        err.seek(0)
        stdout, stderr = out.read().decode(), err.read().decode()
    if proc.returncode != 0:
        raise SystemExit(f"{' '.join(argv)} failed ({proc.returncode}):\n{stderr[-2000:]}")
    return wall, usage.ru_maxrss / 1024, stdout, stderr


def bar_rate(stderr: str) -> str:
    """The events/s the progress bar showed last (its final redraw)."""
    found = re.findall(r"([\d,]+)/s", stderr.split("\r")[-1])
    return found[-1] if found else "?"


def backtest(tmp: Path, source: list[str], label: str, n: int, base_s: float, base_mb: float) -> Path:
    out = tmp / f"triggers-{label.split()[0]}.jsonl"
    wall, mb, stdout, stderr = child([sys.executable, "-m", "tripwire.cli.main", "rules", "backtest", str(tmp / "bench.rules"),
                                      *source, "--out", str(out), "--json", "--samples", "0"])
    report = orjson.loads(stdout)
    triggers = report["rules"]["cart then checkout"]["triggers"]
    print(f"  backtest {label:<24} {wall:7.1f} s {n / wall:>10,.0f} events/s   peak RSS {mb:7.0f} MB"
          f"   (x{wall / base_s:.1f} the baseline's time, +{mb - base_mb:.0f} MB; bar said {bar_rate(stderr)}/s;"
          f" {triggers:,} triggers)")
    return out


def make(what: str, tmp: Path, n: int, days: int) -> None:
    """Write the data in a child process (see the module docstring)."""
    child([sys.executable, __file__, "--make", what, "--dir", str(tmp), "--events", str(n), "--days", str(days)])


def run_jsonl(tmp: Path, n: int, days: int) -> None:
    t = time.perf_counter()
    make("jsonl", tmp, n, days)
    sorted_path, half_path, shuffled_path = tmp / "events.jsonl", tmp / "half.jsonl", tmp / "shuffled.jsonl"
    size = sorted_path.stat().st_size
    print(f"jsonl: {n:,} events over {days} days, {size / n:.0f} bytes/event, written in {time.perf_counter() - t:.0f} s")
    wall, mb, _, _ = child([sys.executable, "-c", BASELINE_JSONL, str(sorted_path)])
    print(f"  baseline (read + orjson.loads)   {wall:7.1f} s {n / wall:>10,.0f} events/s   peak RSS {mb:7.0f} MB")
    a = backtest(tmp, ["--events", str(sorted_path)], "--events (in order)", n, wall, mb)
    backtest(tmp, ["--events", str(half_path)], "--events, first half", n // 2, wall / 2, mb)
    b = backtest(tmp, ["--events", str(shuffled_path)], "--events (shuffled)", n, wall, mb)
    same = a.read_bytes() == b.read_bytes()
    print(f"  triggers of the shuffled file {'identical to' if same else 'DIFFER from'} the sorted file's")
    print("  target: peak RSS <= 300 MB over 2,000,000 events, flat as the history grows")


def write_lake(tmp: Path, source: Path, n: int) -> Path:
    from tripwire.envelope import log_key
    from tripwire.log import Record
    from tripwire.log.partition import partition_for
    from tripwire.sinks.config import SinkConfig
    from tripwire.sinks.lake import LocalLake
    from tripwire.sinks.writer import LakeWriter

    values = []
    with open(source, "rb") as f:
        for i, line in enumerate(f):
            if i == n:
                break
            values.append((orjson.loads(line)["receivedAt"], i, line.rstrip(b"\n")))
    values.sort()  # arrival order: what the log holds
    lake_dir = tmp / "lake"
    cfg = SinkConfig(lake_url=str(lake_dir), promote={"price": "number", "sku": "string"}, max_file_age_s=3600)
    records: dict[int, list[Record]] = {p: [] for p in range(4)}
    for _, _, v in values:
        p = partition_for(log_key(orjson.loads(v)).encode(), 4)
        records[p].append(Record("events", p, len(records[p]), None, v, 0))
    del values
    writer = LakeWriter(LocalLake(lake_dir), cfg)
    for p in range(4):
        writer.assign(p)
    for p in range(4):
        for i in range(0, len(records[p]), cfg.poll_max_records):
            writer.process(records[p][i : i + cfg.poll_max_records])
    writer.close()
    return lake_dir


def run_lake(tmp: Path, n: int, days: int) -> None:
    t = time.perf_counter()
    make("lake", tmp, n, days)
    lake = tmp / "lake"
    files = list(lake.glob("date=*/*.parquet"))
    size = sum(f.stat().st_size for f in files)
    print(f"lake: {n:,} events written by the sink in {time.perf_counter() - t:.0f} s: {len(files)} files, "
          f"{size / n:.0f} bytes/event")
    wall, mb, _, _ = child([sys.executable, "-c", BASELINE_LAKE, str(lake)])
    print(f"  baseline (pyarrow rows as dicts) {wall:7.1f} s {n / wall:>10,.0f} events/s   peak RSS {mb:7.0f} MB")
    backtest(tmp, ["--lake", str(lake)], "--lake", n, wall, mb)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--events", type=int, default=2_000_000)
    ap.add_argument("--lake-events", type=int, default=500_000)
    ap.add_argument("--days", type=int, default=7)
    ap.add_argument("--only", choices=["jsonl", "lake"])
    ap.add_argument("--make", choices=["jsonl", "lake"], help=argparse.SUPPRESS)  # the data-writing child
    ap.add_argument("--dir", help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.make == "jsonl":
        write_files(Path(args.dir), args.events, args.days)
        return
    if args.make == "lake":
        source = Path(args.dir) / "lake-events.jsonl"
        with open(source, "wb") as out:
            for env in sessions(args.events, args.days):
                out.write(orjson.dumps(env) + b"\n")
        write_lake(Path(args.dir), source, args.events)
        source.unlink()
        return
    with tempfile.TemporaryDirectory(prefix="tripwire-bench-backtest-") as d:
        tmp = Path(d)
        (tmp / "bench.rules").write_text(RULE)
        if args.only in (None, "jsonl"):
            run_jsonl(tmp, args.events, args.days)
        if args.only in (None, "lake"):
            run_lake(tmp, args.lake_events, args.days)


if __name__ == "__main__":
    main()

"""In-process micro-benchmark of the collector's /v1/batch path (no HTTP server, no wrk).

    python bench/collector_micro.py [--seconds 3] [--concurrency 32] [--cpu 0] [--profile]

Drives the ASGI app directly with the same 100-event batch body as bench/collector.py and
prints, per stage, events/s and the CPU time of one 100-event request: orjson.loads alone,
``Intake.prepare`` (envelope, enrichment, serialisation), ``SqliteLog.append`` of prepared
entries (group commit, synchronous=FULL), and the whole handler (parse + prepare + durable
append), with ``--concurrency`` requests in flight so appends share commits as under load.
The process is pinned to one CPU (``--cpu``, -1 for none) as bench/collector.py pins the
server: unpinned, the log's writer thread runs on another core and its work (compression,
SQLite, fsync) vanishes from the rates. The CPU time of the appends is the event loop's
plus the writer thread's (Linux). ``--profile`` prints a cProfile of the whole-handler loop
instead. Asserts nothing.
"""

from __future__ import annotations

import argparse
import asyncio
import base64
import cProfile
import pstats
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import orjson

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

import importlib.util  # noqa: E402
import os  # noqa: E402

from tripwire.collector import create_app  # noqa: E402
from tripwire.collector.enrich import IpPolicy  # noqa: E402
from tripwire.collector.intake import Intake  # noqa: E402
from tripwire.config import from_dict  # noqa: E402
from tripwire.log import EVENTS  # noqa: E402
from tripwire.log.sqlite import SqliteLog  # noqa: E402

EVENTS_PER_BODY = 100


def _wrk_bench() -> Any:
    """bench/collector.py (its module name would clash with the collector package)."""
    spec = importlib.util.spec_from_file_location("bench_collector", REPO / "bench" / "collector.py")
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


_BENCH = _wrk_bench()
BATCH_BODY: bytes = _BENCH.BATCH_BODY
WRITE_KEY: str = _BENCH.WRITE_KEY


def rate(fn: Any, seconds: float) -> tuple[float, float]:
    """Events/s of ``fn`` (one request) and its CPU microseconds per request."""
    n, start, cpu = 0, time.perf_counter(), time.thread_time()
    while time.perf_counter() - start < seconds:
        fn()
        n += 1
    return n * EVENTS_PER_BODY / (time.perf_counter() - start), (time.thread_time() - cpu) / n * 1e6


def thread_cpu_s(native_id: int) -> float:
    """CPU seconds of one thread of this process (0 where /proc is missing)."""
    try:
        with open(f"/proc/self/task/{native_id}/stat") as f:
            fields = f.read().rpartition(")")[2].split()
    except OSError:
        return 0.0
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


async def main_async(args: argparse.Namespace) -> None:
    with tempfile.TemporaryDirectory(prefix="tripwire-micro-") as tmp:
        config = from_dict({"data_dir": tmp, "sources": {"bench": {"write_key": WRITE_KEY}}})
        log = SqliteLog(Path(tmp) / "log.db", 4)
        await log.start()
        writer = log._writer._thread.native_id if log._writer is not None else None  # noqa: SLF001 (a bench)

        def writer_cpu_s() -> float:
            return thread_cpu_s(writer) if writer is not None else 0.0
        app = create_app(config, log)
        auth = b"Basic " + base64.b64encode(f"{WRITE_KEY}:".encode())
        scope = {
            "type": "http", "method": "POST", "path": "/v1/batch", "raw_path": b"/v1/batch",
            "headers": [(b"content-type", b"application/json"), (b"authorization", auth),
                        (b"content-length", str(len(BATCH_BODY)).encode()), (b"user-agent", b"bench/1")],
            "client": ("203.0.113.7", 40000), "server": ("127.0.0.1", 8000), "scheme": "http",
            "query_string": b"", "http_version": "1.1", "root_path": "",
        }
        status: list[int] = []

        async def receive() -> dict[str, Any]:
            return {"type": "http.request", "body": BATCH_BODY, "more_body": False}

        async def send(message: dict[str, Any]) -> None:
            if message["type"] == "http.response.start":
                status.append(message["status"])

        await app(dict(scope), receive, send)
        assert status == [200], status

        # the same settings as the app's defaults (truncate IPs /24, /48; no trusted proxies)
        intake = Intake(log, {}, catalog=None, ip_policy=IpPolicy([], True), max_event_bytes=32 * 1024)

        async def handler_loop(seconds: float) -> tuple[float, float]:
            done = 0
            stop_at = time.perf_counter() + seconds
            start, cpu, wcpu = time.perf_counter(), time.thread_time(), writer_cpu_s()

            async def worker() -> None:
                nonlocal done
                while time.perf_counter() < stop_at:
                    await app(dict(scope), receive, send)
                    done += 1

            await asyncio.gather(*(worker() for _ in range(args.concurrency)))
            used = time.thread_time() - cpu + writer_cpu_s() - wcpu
            return done * EVENTS_PER_BODY / (time.perf_counter() - start), used / done * 1e6

        if args.profile:
            prof = cProfile.Profile()
            prof.enable()
            got, _ = await handler_loop(args.seconds)
            prof.disable()
            print(f"whole handler under the profiler: {got:,.0f} events/s")
            pstats.Stats(prof).sort_stats("tottime").print_stats(30)
            await log.stop()
            return

        parse = rate(lambda: orjson.loads(BATCH_BODY), args.seconds)

        def prep() -> None:
            doc = orjson.loads(BATCH_BODY)
            intake.prepare(doc["batch"], source="bench", default_type=None, client_ip="203.0.113.7",
                           user_agent="bench/1", library={"name": "http", "version": "1"}, batch=doc)

        prepare_rate = rate(prep, args.seconds)

        doc = orjson.loads(BATCH_BODY)
        entries = [((e["anonymousId"]).encode(), orjson.dumps(e)) for e in doc["batch"]]

        async def append_loop(seconds: float) -> tuple[float, float]:
            done = 0
            stop_at = time.perf_counter() + seconds
            start, cpu, wcpu = time.perf_counter(), time.thread_time(), writer_cpu_s()

            async def worker() -> None:
                nonlocal done
                while time.perf_counter() < stop_at:
                    await log.append(EVENTS, entries)
                    done += 1

            await asyncio.gather(*(worker() for _ in range(args.concurrency)))
            used = time.thread_time() - cpu + writer_cpu_s() - wcpu
            return done * EVENTS_PER_BODY / (time.perf_counter() - start), used / done * 1e6

        append = await append_loop(args.seconds)
        whole = await handler_loop(args.seconds)
        await log.stop()

    pinned = f"pinned to CPU {args.cpu}" if args.cpu >= 0 else "not pinned"
    print(f"in-process /v1/batch (100 events/body, {args.concurrency} in flight, {args.seconds:g}s each, {pinned}):")
    print(f"  {'stage':<29}{'events/s':>12}{'CPU us/request':>16}")
    for label, (events_s, cpu_us) in (("orjson.loads only", parse), ("parse + Intake.prepare", prepare_rate),
                                      ("SqliteLog.append only", append), ("whole handler (ASGI)", whole)):
        print(f"  {label:<29}{events_s:>12,.0f}{cpu_us:>16,.1f}")


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--seconds", type=float, default=3.0)
    parser.add_argument("--concurrency", type=int, default=32)
    parser.add_argument("--cpu", type=int, default=0, help="pin the process to this CPU (-1: do not pin)")
    parser.add_argument("--profile", action="store_true")
    args = parser.parse_args()
    if args.cpu >= 0 and hasattr(os, "sched_setaffinity"):
        os.sched_setaffinity(0, {args.cpu})  # before the log starts its writer thread, which inherits it
    asyncio.run(main_async(args))
    return 0


if __name__ == "__main__":
    sys.exit(main())

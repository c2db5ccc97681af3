"""Collector throughput against a bare Starlette+uvicorn baseline, on the same machine, same load.

    python bench/collector.py [--duration 10] [--rounds 3] [--connections N] [--batch-connections N]

Starts (each pinned to CPU 0, one uvicorn worker with httptools + uvloop):
  * baseline: a bare Starlette app whose handler only reads the body, ``orjson.loads`` it
    and answers ``{"success": true}``;
  * collector: ``tripwire collector`` on the embedded SQLite log (WAL, synchronous=FULL,
    group commit) with one configured source and its write key sent as Basic auth.
Drives both with ``wrk`` (Debian package) pinned to CPU 1 and a Lua script that POSTs
the same bodies.

The ratios must compare servers, not queues: a closed loop with far more connections than
a server needs only lengthens its queue (at 256 connections the baseline timed out requests,
p99 near a second), and what it then measures is how the server copes with overload. So
each scenario first sweeps the connection count (1 to 128) on both servers and picks the
smallest count at which both deliver at least 90% of their best rate (the collector needs
requests in flight to share its group commits), stepping down while the baseline shows
overload there (timeouts, errors, or a p99 over 50 ms and ten times its p50: a tail of
connections left waiting); it prints the sweep, the choice and why. ``--connections`` /
``--batch-connections`` skip the sweep.

Then ``--rounds`` interleaved rounds at that count, baseline and collector back to back
(their order alternating), give one ratio per round: other load on a shared machine hits
both runs of a round alike, so the spread of the round ratios says how far to trust them.
Each round also reads the server's CPU time per request (/proc, all its threads): a server
pinned to a CPU that other programs share loses wall time but not CPU time, so the ratio of
CPU per request is the steadier estimate of the same quantity on a busy machine.
Last, latency at half the collector's maximum rate (each connection paced), and the raw
``orjson.loads`` rate of the batch. Asserts nothing (machines here are noisy).

Targets: single-event /v1/track >= 0.75 of the baseline; /v1/batch of 100 events >= 0.5
of the baseline (events/s per worker).
"""

from __future__ import annotations

import argparse
import base64
import contextlib
import os
import re
import shutil
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import orjson

REPO = Path(__file__).resolve().parents[1]
WRITE_KEY = "bench_key"
SERVER_CPU = "0"
LOAD_CPU = "1"

EVENT = {
    "type": "track",
    "event": "Product Added",
    "anonymousId": "4f9a1c2e-7b3d-4e8f-9a0b-1c2d3e4f5a6b",
    "timestamp": "2026-01-01T12:00:00.000Z",
    "sentAt": "2026-01-01T12:00:00.250Z",
    "properties": {"sku": "SKU-12345", "price": 19.99, "quantity": 1, "currency": "EUR", "cart_id": "c-778"},
    "context": {
        "library": {"name": "tripwire.js", "version": "0.1.0"},
        "page": {"url": "https://shop.example/p/12345", "path": "/p/12345", "referrer": "https://www.google.com/", "title": "Blue Shoe"},
        "locale": "en-US",
        "userAgent": "Mozilla/5.0 (X11; Linux x86_64) AppleWebKit/537.36 (KHTML, like Gecko) Chrome/120.0 Safari/537.36",
    },
}


def batch_body(n: int) -> bytes:
    # As an SDK sends it: distinct ids and event times, one sentAt for the batch.
    events = [
        {**{k: v for k, v in EVENT.items() if k != "sentAt"}, "anonymousId": f"anon-{i % 25}",
         "messageId": f"m-{i}", "timestamp": f"2026-01-01T12:00:{i // 10:02d}.{(i * 37) % 1000:03d}Z"}
        for i in range(n)
    ]
    return orjson.dumps({"batch": events, "sentAt": "2026-01-01T12:00:01.000Z"})


TRACK_BODY = orjson.dumps({k: v for k, v in EVENT.items() if k != "type"})
BATCH_BODY = batch_body(100)


# --- the baseline app ------------------------------------------------------------


def baseline_app():  # type: ignore[no-untyped-def]
    from starlette.applications import Starlette
    from starlette.requests import Request
    from starlette.responses import Response
    from starlette.routing import Route

    async def parse(request: Request) -> Response:
        orjson.loads(await request.body())
        return Response(b'{"success": true}', media_type="application/json")

    return Starlette(routes=[Route("/v1/track", parse, methods=["POST"]), Route("/v1/batch", parse, methods=["POST"])])


def serve_baseline(port: int) -> None:
    import uvicorn

    uvicorn.run(baseline_app(), host="127.0.0.1", port=port, access_log=False, log_level="warning",
                loop="uvloop", http="httptools")


# --- wrk ------------------------------------------------------------------------------


def _ms(text: str) -> float:
    value, unit = re.fullmatch(r"([\d.]+)(us|ms|s|m)", text).groups()  # type: ignore[union-attr]
    return float(value) * {"us": 0.001, "ms": 1.0, "s": 1000.0, "m": 60000.0}[unit]


def wrk(url: str, body: bytes, workdir: Path, duration_s: int, connections: int, delay_ms: float | None = None) -> dict[str, Any]:
    """Closed loop; with ``delay_ms`` each connection pauses that long between requests (paced load)."""
    body_file = workdir / f"body-{len(body)}.json"
    body_file.write_bytes(body)
    script = workdir / f"post-{len(body)}.lua"
    auth = base64.b64encode(f"{WRITE_KEY}:".encode()).decode()
    script.write_text(
        f'local f = io.open("{body_file}", "rb")\n'
        "wrk.method = \"POST\"\nwrk.body = f:read(\"*all\")\nf:close()\n"
        'wrk.headers["Content-Type"] = "application/json"\n'
        f'wrk.headers["Authorization"] = "Basic {auth}"\n'
        + (f"function delay() return {delay_ms:.3f} end\n" if delay_ms is not None else "")
    )
    out = subprocess.run(
        ["taskset", "-c", LOAD_CPU, "wrk", "-t1", f"-c{connections}", f"-d{duration_s}s", "--latency", "-s", str(script), url],
        capture_output=True, text=True, check=True, timeout=duration_s + 60,
    ).stdout
    def find(pattern: str) -> str:
        m = re.search(pattern, out, re.M)
        if m is None:
            raise RuntimeError(f"unexpected wrk output:\n{out}")
        return m.group(1)

    rps = float(find(r"Requests/sec:\s+([\d.]+)"))
    requests = int(find(r"(\d+) requests in"))
    p50 = _ms(find(r"^\s+50%\s+(\S+)\s*$"))
    p99 = _ms(find(r"^\s+99%\s+(\S+)\s*$"))
    non2xx = re.search(r"Non-2xx or 3xx responses:\s+(\d+)", out)
    errors = re.search(r"Socket errors: connect (\d+), read (\d+), write (\d+), timeout (\d+)", out)
    connect, read, write, timeout = (int(n) for n in errors.groups()) if errors else (0, 0, 0, 0)
    return {"rps": rps, "requests": requests, "p50_ms": p50, "p99_ms": p99, "non2xx": int(non2xx.group(1)) if non2xx else 0,
            "timeouts": timeout, "socket_errors": connect + read + write}


def cpu_s(pid: int) -> float:
    """CPU seconds a process (all its threads) has used so far."""
    with open(f"/proc/{pid}/stat") as f:
        fields = f.read().rpartition(")")[2].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def troubled(r: dict[str, Any]) -> bool:
    """Requests that timed out, failed or were refused: the server was overloaded (or broken)."""
    return bool(r["timeouts"] or r["socket_errors"] or r["non2xx"])


# --- servers --------------------------------------------------------------------------


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def wait_ready(port: int, timeout_s: float = 30) -> None:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        with contextlib.suppress(OSError), socket.create_connection(("127.0.0.1", port), timeout=0.5):
            return
        time.sleep(0.1)
    raise TimeoutError(f"server on port {port} did not come up")


@contextlib.contextmanager
def server(cmd: list[str], port: int, env: dict[str, str] | None = None) -> Iterator[subprocess.Popen[bytes]]:
    proc = subprocess.Popen(["taskset", "-c", SERVER_CPU, *cmd], env={**os.environ, **(env or {})},
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        wait_ready(port)
        yield proc
    finally:
        proc.terminate()
        try:
            proc.wait(30)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(10)


def fsync_ms(directory: Path, n: int = 100) -> float:
    """The disk's fsync latency now: group commit waits for it, so it bounds the collector."""
    path = directory / "fsync.probe"
    fd = os.open(path, os.O_WRONLY | os.O_CREAT, 0o600)
    try:
        start = time.perf_counter()
        for _ in range(n):
            os.write(fd, b"x" * 512)
            os.fsync(fd)
        return (time.perf_counter() - start) / n * 1000
    finally:
        os.close(fd)
        path.unlink()


def orjson_rate(body: bytes, events: int, seconds: float = 2.0) -> float:
    n, start = 0, time.perf_counter()
    while time.perf_counter() - start < seconds:
        for _ in range(50):
            orjson.loads(body)
        n += 50
    return n * events / (time.perf_counter() - start)


LADDER = (1, 2, 4, 8, 16, 32, 64, 128)
KNEE = 0.9  # a server "delivers" from the count where it reaches this share of its best rate
TAIL_MS = 50.0  # a p99 over this and over TAIL_TIMES its p50: some connections wait in a queue
TAIL_TIMES = 10.0


def queued(r: dict[str, Any]) -> str:
    """Why a run shows an overloaded server ('' when it does not): timeouts, errors, or a starving tail."""
    if troubled(r):
        return f"{r['timeouts']} timeouts, {r['socket_errors']} socket errors, {r['non2xx']} non-2xx"
    if r["p99_ms"] > max(TAIL_MS, TAIL_TIMES * r["p50_ms"]):
        return f"p99 {r['p99_ms']:.0f} ms is {r['p99_ms'] / r['p50_ms']:.0f}x its p50"
    return ""


def choose_connections(sweep: dict[str, dict[int, dict[str, Any]]]) -> tuple[int, str]:
    """The smallest count at which both servers deliver, stepped down while the baseline is overloaded there; and why."""
    knees = {}
    for who, by_count in sweep.items():
        best = max(r["rps"] for r in by_count.values())
        knees[who] = min(c for c, r in by_count.items() if r["rps"] >= KNEE * best)
    chosen = max(knees.values())
    base = sweep["baseline"]
    skipped = []
    while queued(base[chosen]) and any(c < chosen for c in base):
        skipped.append(f"-c{chosen} ({queued(base[chosen])})")
        chosen = max(c for c in base if c < chosen)
    b = base[chosen]
    why = (f"the baseline reaches {KNEE:.0%} of its best rate from -c{knees['baseline']}, the collector "
           f"(group commit wants requests in flight) from -c{knees['collector']}"
           + (f"; the baseline is overloaded at {', '.join(skipped)}" if skipped else "")
           + f"; at -c{chosen} it answers p50 {b['p50_ms']:.2f} ms, p99 {b['p99_ms']:.2f} ms, "
           + (f"but {queued(b)} (no count was clean)" if queued(b) else "no timeouts or errors"))
    return chosen, why


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--duration", type=int, default=10, help="seconds per wrk run (default 10)")
    parser.add_argument("--connections", type=int, help="wrk connections for /v1/track (default: chosen by a sweep)")
    parser.add_argument("--batch-connections", type=int, help="wrk connections for /v1/batch (default: chosen by a sweep)")
    parser.add_argument("--sweep-duration", type=int, default=2, help="seconds per wrk run of the sweep (default 2)")
    parser.add_argument("--rounds", type=int, default=3, help="interleaved rounds, one ratio each (default 3)")
    parser.add_argument("--serve-baseline", type=int, metavar="PORT", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.serve_baseline:
        serve_baseline(args.serve_baseline)
        return 0
    for tool in ("wrk", "taskset"):
        if shutil.which(tool) is None:
            print(f"bench/collector.py needs '{tool}' (apt-get install -y wrk util-linux)", file=sys.stderr)
            return 2
    env = {"PYTHONPATH": os.pathsep.join(filter(None, [str(REPO), os.environ.get("PYTHONPATH", "")]))}
    scenarios = (("track", "/v1/track", TRACK_BODY), ("batch", "/v1/batch", BATCH_BODY))
    given = {"track": args.connections, "batch": args.batch_connections}
    conns: dict[str, int] = {}
    why: dict[str, str] = {}
    sweeps: dict[str, dict[str, dict[int, dict[str, Any]]]] = {}
    runs: dict[str, list[dict[str, Any]]] = {}
    with tempfile.TemporaryDirectory(prefix="tripwire-bench-") as tmp:
        workdir = Path(tmp)
        config = workdir / "tripwire.toml"
        config.write_text(f'data_dir = "data"\n[sources.bench]\nwrite_key = "{WRITE_KEY}"\n')
        base_port, coll_port = free_port(), free_port()
        ports = {"baseline": base_port, "collector": coll_port}
        cmd = [sys.executable, "-m", "tripwire", "--log-level", "warning", "--config", str(config), "collector", "--port", str(coll_port)]
        fsync_before = fsync_ms(workdir)
        with server([sys.executable, __file__, "--serve-baseline", str(base_port)], base_port, env) as base_proc, \
                server(cmd, coll_port, env) as coll_proc:
            pids = {"baseline": base_proc.pid, "collector": coll_proc.pid}  # taskset execs: the server's own pid
            for name, path, body in scenarios:  # warm-up
                for port in ports.values():
                    wrk(f"http://127.0.0.1:{port}{path}", body, workdir, 2, given[name] or 32)
            for name, path, body in scenarios:
                if given[name]:
                    conns[name], why[name] = given[name], "given on the command line"
                    continue
                sweep = sweeps[name] = {"baseline": {}, "collector": {}}
                for c in LADDER:
                    for who, port in ports.items():
                        sweep[who][c] = wrk(f"http://127.0.0.1:{port}{path}", body, workdir, args.sweep_duration, c)
                conns[name], why[name] = choose_connections(sweep)
            # Interleaved rounds: baseline and collector back to back, the order alternating.
            for i in range(args.rounds):
                order = list(ports.items()) if i % 2 == 0 else list(reversed(ports.items()))
                for name, path, body in scenarios:
                    for who, port in order:
                        before = cpu_s(pids[who])
                        result = wrk(f"http://127.0.0.1:{port}{path}", body, workdir, args.duration, conns[name])
                        result["cpu_us"] = (cpu_s(pids[who]) - before) / max(result["requests"], 1) * 1e6
                        runs.setdefault(f"{who}_{name}", []).append(result)
            results = {k: max(v, key=lambda r: r["rps"]) for k, v in runs.items()}
            # Latency at half the collector's maximum: each connection pauses between requests.
            paced: dict[str, tuple[float, dict[str, Any]]] = {}
            for name, path, body in scenarios:
                rate = results[f"collector_{name}"]["rps"] / 2
                n = conns[name]
                url = f"http://127.0.0.1:{coll_port}{path}"
                # The pause excludes the response time: calibrate it with a short run first.
                delay = n / rate * 1000
                probe = wrk(url, body, workdir, 2, n, delay_ms=delay)
                delay = max(0.0, delay - (n / probe["rps"] * 1000 - delay))
                paced[name] = (rate, wrk(url, body, workdir, args.duration, n, delay_ms=delay))
    parse_rate = orjson_rate(BATCH_BODY, 100)

    print(f"Tripwire collector benchmark: 1 uvicorn worker each on CPU {SERVER_CPU}, wrk -t1 on CPU {LOAD_CPU}; "
          "collector on embedded SQLite (synchronous=FULL, group commit)")
    print(f"  track body {len(TRACK_BODY)} B, batch body {len(BATCH_BODY)} B (100 events); "
          f"fsync latency before the runs {fsync_before:.2f} ms; load average {os.getloadavg()[0]:.1f}")
    for name, label in (("track", "/v1/track"), ("batch", "/v1/batch")):
        print()
        if name in sweeps:
            sweep = sweeps[name]
            print(f"  {label}: connection sweep, {args.sweep_duration}s per run "
                  "(req/s, p50/p99 ms; t = timeouts, e = errors)")
            for c in LADDER:
                cells = []
                for who in ("baseline", "collector"):
                    r = sweep[who][c]
                    trouble = f" t{r['timeouts']} e{r['socket_errors'] + r['non2xx']}" if troubled(r) else (" tail" if queued(r) else "")
                    cells.append(f"{who} {r['rps']:>8,.0f} {r['p50_ms']:>7.2f}/{r['p99_ms']:<8.2f}{trouble:<10}")
                print(f"    -c{c:<4} " + "  ".join(cells))
        print(f"  {label}: -c{conns[name]}: {why[name]}")
    print()
    pairs = {name: list(zip(runs[f"baseline_{name}"], runs[f"collector_{name}"])) for name in ("track", "batch")}
    ratios = {name: [coll["rps"] / base["rps"] for base, coll in pairs[name]] for name in pairs}
    cpu_ratios = {name: [base["cpu_us"] / coll["cpu_us"] for base, coll in pairs[name]] for name in pairs}
    print(f"  {args.rounds} interleaved rounds of {args.duration}s; ratio = collector / baseline in the same round")
    print(f"  {'scenario':<26}{'conns':>6}{'baseline req/s':>16}{'collector req/s':>17}{'ratio (median)':>16}   {'rounds':<22}target")
    bt, ct = results["baseline_track"], results["collector_track"]
    bb, cb = results["baseline_batch"], results["collector_batch"]
    for name, label, base_r, coll_r, target in (("track", "POST /v1/track (1 event)", bt, ct, ">= 0.75"),
                                                ("batch", "POST /v1/batch (100 ev.)", bb, cb, ">= 0.5")):
        rs = ratios[name]
        spread = f"{min(rs):.2f}-{max(rs):.2f}" if len(rs) > 1 else ""
        print(f"  {label:<26}{conns[name]:>6}{base_r['rps']:>16,.0f}{coll_r['rps']:>17,.0f}{statistics.median(rs):>16.2f}   "
              f"{spread:<22}{target}")
    print("  (req/s: the best round of each)")
    print("  CPU time per request (the server process, all threads; steadier than req/s when other programs share")
    print("  the CPU, as the server only pays for the time it runs): ratio = baseline CPU / collector CPU")
    for name, label in (("track", "POST /v1/track (1 event)"), ("batch", "POST /v1/batch (100 ev.)")):
        base_us = statistics.median(b["cpu_us"] for b, _ in pairs[name])
        coll_us = statistics.median(c["cpu_us"] for _, c in pairs[name])
        rs = cpu_ratios[name]
        spread = f"{min(rs):.2f}-{max(rs):.2f}" if len(rs) > 1 else ""
        print(f"  {label:<26}{'':>6}{base_us:>13,.1f} us{coll_us:>14,.1f} us{statistics.median(rs):>16.2f}   {spread}")
    print()
    print(f"  /v1/batch events/s per worker: collector {cb['rps'] * 100:,.0f}; baseline parse-only {bb['rps'] * 100:,.0f}")
    print(f"  raw orjson.loads of the same batch body, in-process: {parse_rate:,.0f} events/s")
    print()
    print(f"  latency at half the collector's max (wrk, each connection paced, {args.duration}s):")
    for name, label in (("track", "/v1/track"), ("batch", "/v1/batch")):
        rate, r = paced[name]
        print(f"    {label} at {rate:,.0f} req/s, -c{conns[name]} (achieved {r['rps']:,.0f}): "
              f"p50 {r['p50_ms']:.2f} ms, p99 {r['p99_ms']:.2f} ms")
    print(f"  (at the maximum: /v1/track p50 {ct['p50_ms']:.1f} ms p99 {ct['p99_ms']:.1f} ms; "
          f"/v1/batch p50 {cb['p50_ms']:.1f} ms p99 {cb['p99_ms']:.1f} ms)")
    print("  all rounds req/s: " + ", ".join(f"{k} {[round(r['rps']) for r in v]}" for k, v in runs.items()))
    bad = {k: [r for r in v if troubled(r)] for k, v in runs.items()}
    bad = {k: v for k, v in bad.items() if v}
    if bad:
        print(f"  WARNING: timeouts or errors during the rounds: {bad}")
    return 0


if __name__ == "__main__":
    sys.exit(main())

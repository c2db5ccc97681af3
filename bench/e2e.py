"""The whole embedded stack: sustained events/s and ingest-to-webhook latency, plus the per-component benchmarks.

    python bench/e2e.py [--duration 30] [--latency-samples 200] [--no-components]

1. Starts ``tripwire run`` (collector, rules engine, webhook dispatcher and sink
   on one machine: the collector, dispatcher and console in one process, the engine(s) and
   sink(s) in their own, embedded SQLite log, lake on local disk) with the demo
   catalog and a rule set of one positive rule ("big order": fires on the
   event itself) and one absence rule, and a webhook receiver in this process.
2. Sustained rate: ``wrk`` (sharing the cores with the stack) posts
   the snippet's batch format (``{"batch": [...20 events...], "sentAt",
   "writeKey"}``, the events shaped as t.js builds them, unique messageIds) for
   ``--duration`` seconds. Prints the acknowledged rate, then how long the
   engine and the sink took to catch up with everything acknowledged, and the
   *sustained* rate: events / (time until the last one was matched and in the
   lake). The baseline in the same run: a bare Starlette+uvicorn app on CPU 0
   that only parses the same bodies (the collector benchmark's baseline).
3. Latency: one "Order Completed" (total 500) at a time, ``--latency-samples``
   times, each POSTed as a snippet batch; from just before the POST to the
   signed webhook arriving at the receiver: p50/p99, on the idle stack and
   under a paced background load of half the sustained rate (issue 16: p99 <= 50 ms there).
4. Per component, unless ``--no-components``: ``bench/collector.py``,
   ``bench/rules.py``, ``bench/sink.py`` and ``bench/kafka_log.py`` (each when
   present) with short settings; their output is printed as is.

Asserts nothing: machines here are noisy; it prints figures and ratios.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import re
import shutil
import socket
import statistics
import subprocess
import sys
import tempfile
import threading
import time
import urllib.request
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from tripwire.cli.receiver import Receiver, decode_secret  # noqa: E402

WRITE_KEY = "bench-shop-key"
SECRET = "whsec_Y4PBOb53VF7OoWLmD0wZfsT9u0Rr2vhV"
BATCH = 20  # the snippet flushes as soon as 20 events wait (data-batch default)
SERVER_CPU, LOAD_CPU = "0", "1"

RULES = """
rule "big order"
  when "Order Completed" as o where o.properties.total >= 100
  post crm with { order_id: o.properties.order_id }

rule "abandoned cart"
  when "Product Added" as cart
  then no "Checkout Started" within 30m
  post crm with { sku: cart.properties.sku }
"""

# wrk script: the snippet's batch body, 20 events of the shape t.js builds, unique messageIds,
# 10,000 visitors; a few "Product Added" (absence timers pending, as on a real site).
WRK_LUA = r"""
local n = 0
local tid = 0
setup = function(thread) tid = tid + 1; thread:set("tid", tid) end
local ctx = '"context":{"library":{"name":"tripwire.js","version":"0.1.0"},"page":{"path":"/p/12345","referrer":"https://www.google.com/","search":"","title":"Blue Shoe","url":"https://shop.example/p/12345"},"locale":"en-US","userAgent":"Mozilla/5.0 (X11; Linux x86_64) AppleWebKit/537.36 (KHTML, like Gecko) Chrome/120.0 Safari/537.36","screen":{"width":1920,"height":1080},"timezone":"Europe/Berlin","sessionId":1767225600000}'
request = function()
  local parts = {}
  for i = 1, 20 do
    n = n + 1
    local v = (n * 7919) % 10000
    local name = (n % 10 == 0) and "Product Added" or "Product Viewed"
    parts[i] = string.format('{"type":"track","event":"%s","messageId":"w%d-%d","anonymousId":"visitor-%d","timestamp":"%s","properties":{"sku":"SKU-%d","price":19.99,"quantity":1},%s}',
      name, tid, n, v, os.date("!%Y-%m-%dT%H:%M:%S.000Z"), v % 500, ctx)
  end
  local body = '{"batch":[' .. table.concat(parts, ",") .. '],"sentAt":"' .. os.date("!%Y-%m-%dT%H:%M:%S.000Z") .. '","writeKey":"WRITE_KEY"}'
  return wrk.format("POST", "/v1/batch", {["Content-Type"] = "text/plain"}, body)
end
"""

BASELINE_APP = """
import orjson, uvicorn
from starlette.applications import Starlette
from starlette.responses import Response
from starlette.routing import Route
async def batch(request):
    orjson.loads(await request.body())
    return Response(b'{"success":true}', media_type="application/json")
app = Starlette(routes=[Route("/v1/batch", batch, methods=["POST"])])
uvicorn.run(app, host="127.0.0.1", port=%d, log_level="error", access_log=False)
"""


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def wait_http(url: str, timeout_s: float = 60) -> None:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        try:
            urllib.request.urlopen(url, timeout=1)
            return
        except OSError:
            time.sleep(0.1)
    raise TimeoutError(f"{url} did not answer within {timeout_s}s")


def wait_port(port: int, timeout_s: float = 60) -> None:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        try:
            socket.create_connection(("127.0.0.1", port), timeout=1).close()
            return
        except OSError:
            time.sleep(0.1)
    raise TimeoutError(f"nothing listens on port {port} after {timeout_s}s")


def metric(base: str, name: str) -> float:
    text = urllib.request.urlopen(f"{base}/metrics", timeout=10).read().decode()
    total = 0.0
    for line in text.splitlines():
        if line.startswith(name) and not line.startswith("#"):
            head, _, value = line.rpartition(" ")
            if head == name or head.startswith(name + "{"):
                total += float(value)
    return total


def run_wrk(url: str, lua: Path, seconds: int, connections: int) -> dict[str, float]:
    cmd = ["taskset", "-c", LOAD_CPU, "wrk", "-t1", f"-c{connections}", f"-d{seconds}s", "-s", str(lua), url]
    out = subprocess.run(cmd, capture_output=True, text=True, check=True).stdout
    rps = float(re.search(r"Requests/sec:\s+([\d.]+)", out).group(1))  # type: ignore[union-attr]
    non2xx = re.search(r"Non-2xx or 3xx responses:\s+(\d+)", out)
    return {"rps": rps, "non2xx": float(non2xx.group(1)) if non2xx else 0.0}


def snippet_batch(events: list[dict]) -> bytes:
    now = time.strftime("%Y-%m-%dT%H:%M:%S.000Z", time.gmtime())
    return json.dumps({"batch": events, "sentAt": now, "writeKey": WRITE_KEY}).encode()


def order_event(i: int) -> dict:
    now = time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime()) + ".000Z"
    return {"type": "track", "event": "Order Completed", "messageId": f"probe-{i}-{time.time_ns()}",
            "anonymousId": f"probe-{i}", "timestamp": now,
            "properties": {"order_id": f"probe-{i}", "total": 500},
            "context": {"library": {"name": "tripwire.js", "version": "0.1.0"}, "page": {"path": "/checkout"}}}


def background_load(base: str, eps: float, tag: str, stop: Any) -> None:
    """Paced snippet batches of "Product Viewed" at ``eps`` events/s until ``stop`` is set. Runs in a process
    of its own, so neither its CPU nor its GIL delays the receiver thread that timestamps the probes."""
    import httpx

    async def go() -> None:
        interval = BATCH / eps
        inflight: set[asyncio.Future] = set()
        n = 0
        next_t = time.perf_counter()
        async with httpx.AsyncClient(base_url=base, timeout=30, limits=httpx.Limits(max_connections=64)) as client:
            while not stop.is_set():
                events = []
                for _ in range(BATCH):
                    n += 1
                    e = order_event(n)
                    e.update(event="Product Viewed", messageId=f"bg-{tag}-{n}-{time.time_ns()}",
                             anonymousId=f"bg-{n % 5000}", properties={"sku": f"SKU-{n % 500}"})
                    events.append(e)
                inflight.add(asyncio.ensure_future(client.post("/v1/batch", content=snippet_batch(events),
                                                               headers={"Content-Type": "text/plain"})))
                inflight.difference_update([t for t in inflight if t.done() and not t.exception()])
                next_t += interval
                await asyncio.sleep(max(0.0, next_t - time.perf_counter()))
            results = await asyncio.gather(*inflight, return_exceptions=True)
        errors = [r for r in results if isinstance(r, BaseException) or r.status_code != 200]
        if errors:
            print(f"  WARNING: {len(errors)} background request(s) failed: {errors[0]!r}", file=sys.stderr)

    asyncio.run(go())


async def probe_latency(base: str, receiver: Receiver, out: Path, samples: int, tag: str,
                        background_eps: float = 0.0) -> list[float]:
    """ms from just before the POST to the webhook arriving, one probe at a time."""
    import multiprocessing

    import httpx

    sent: dict[str, float] = {}
    ctx = multiprocessing.get_context("spawn")
    stop = ctx.Event()
    bg = ctx.Process(target=background_load, args=(base, background_eps, tag, stop)) if background_eps > 0 else None
    if bg is not None:
        bg.start()
        await asyncio.sleep(1.0)
    try:
        async with httpx.AsyncClient(base_url=base, timeout=30) as client:
            for i in range(samples):
                e = order_event(i)
                oid = f"{tag}-{i}"
                e["properties"]["order_id"] = oid
                before = receiver.received
                sent[oid] = time.time()
                r = await client.post("/v1/batch", content=snippet_batch([e]), headers={"Content-Type": "text/plain"})
                assert r.status_code == 200, r.text
                deadline = time.monotonic() + 30
                while receiver.received == before and time.monotonic() < deadline:
                    await asyncio.sleep(0.0005)
                await asyncio.sleep(0.02 + (i % 5) * 0.01)  # spread probes across group-commit phases
    finally:
        stop.set()
        if bg is not None:
            bg.join(60)
    lat = []
    for line in out.read_text().splitlines():
        d = json.loads(line)
        oid = (d["body"]["data"].get("payload") or {}).get("order_id")
        if oid in sent:
            lat.append((d["received_at"] - sent[oid]) * 1000)
    return lat


def pct(values: list[float], q: float) -> float:
    s = sorted(values)
    return s[min(len(s) - 1, int(q * len(s)))] if s else float("nan")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--duration", type=int, default=30, help="seconds of wrk load for the sustained rate (default 30)")
    ap.add_argument("--connections", type=int, default=64)
    ap.add_argument("--latency-samples", type=int, default=200)
    ap.add_argument("--no-components", action="store_true", help="skip the per-component benchmarks")
    ap.add_argument("--engines", type=int, default=1, help="tripwire run --engines (engine processes)")
    ap.add_argument("--sinks", type=int, default=1, help="tripwire run --sinks (sink processes)")
    args = ap.parse_args()
    for tool in ("wrk", "taskset"):
        if shutil.which(tool) is None:
            sys.exit(f"bench/e2e.py needs '{tool}' (apt-get install -y wrk util-linux)")

    tmp = Path(tempfile.mkdtemp(prefix="tripwire-e2e-bench-"))
    procs: list[subprocess.Popen[bytes]] = []
    try:
        out = tmp / "received.jsonl"
        receiver = Receiver("127.0.0.1", 0, [decode_secret(SECRET)], out=out, quiet=True)
        threading.Thread(target=receiver.serve_forever, daemon=True).start()
        (tmp / "rules").mkdir()
        (tmp / "rules" / "bench.rules").write_text(RULES)
        shutil.copy(REPO / "examples" / "catalog.json", tmp / "catalog.json")
        port = free_port()
        (tmp / "tripwire.toml").write_text(f"""
data_dir = "data"
[server]
port = {port}
[sources.shop]
write_key = "{WRITE_KEY}"
origins = ["*"]
[collector]
catalog = "catalog.json"
pii_salt = "bench"
[rules]
dir = "rules"
allowed_lateness_ms = 1000
[endpoints.crm]
url = "http://127.0.0.1:{receiver.port}/hooks"
secret = "{SECRET}"
[webhooks]
allow_networks = ["127.0.0.1/32"]
[sink]
max_file_age_s = 1
""")
        env = {**os.environ, "PYTHONPATH": str(REPO)}
        log = (tmp / "run.log").open("wb")
        # Not pinned: the collector, the engine(s) and the sink(s) are processes of their own, on every core.
        procs.append(subprocess.Popen([sys.executable, "-m", "tripwire", "--config", str(tmp / "tripwire.toml"),
                                       "--log-level", "warning", "run", "--engines", str(args.engines),
                                       "--sinks", str(args.sinks)],
                                      env=env, stdout=log, stderr=subprocess.STDOUT, start_new_session=True))
        base = f"http://127.0.0.1:{port}"
        wait_http(f"{base}/readyz")
        lua = tmp / "batch.lua"
        lua.write_text(WRK_LUA.replace("WRITE_KEY", WRITE_KEY))

        bport = free_port()
        procs.append(subprocess.Popen(["taskset", "-c", SERVER_CPU, sys.executable, "-c", BASELINE_APP % bport], env=env))
        wait_port(bport)
        baseline = run_wrk(f"http://127.0.0.1:{bport}/v1/batch", lua, max(5, args.duration // 2), args.connections)
        procs[-1].terminate()

        # idle latency first (empty log), then the sustained rate, then latency under load
        asyncio.run(probe_latency(base, receiver, out, 20, "warmup"))
        idle = asyncio.run(probe_latency(base, receiver, out, args.latency_samples, "idle"))

        accepted0 = metric(base, "tripwire_collector_events_accepted_total")
        rules0 = metric(base, "tripwire_rules_events_total")
        sink0 = metric(base, "tripwire_sink_rows_written_total")
        t0 = time.monotonic()
        load = run_wrk(f"{base}/v1/batch", lua, args.duration, args.connections)
        t_load = time.monotonic() - t0
        accepted = metric(base, "tripwire_collector_events_accepted_total") - accepted0
        caught = {}
        deadline = time.monotonic() + 600
        while time.monotonic() < deadline and len(caught) < 2:
            if "engine" not in caught and metric(base, "tripwire_rules_events_total") - rules0 >= accepted:
                caught["engine"] = time.monotonic() - t0
            if "sink" not in caught and metric(base, "tripwire_sink_rows_written_total") - sink0 >= accepted:
                caught["sink"] = time.monotonic() - t0
            time.sleep(0.2)
        sustained = accepted / max(caught.values()) if len(caught) == 2 else float("nan")
        loaded = asyncio.run(probe_latency(base, receiver, out, args.latency_samples, "loaded", background_eps=sustained / 2))

        print(f"Tripwire end to end: `tripwire run --engines {args.engines} --sinks {args.sinks}` (embedded SQLite log, "
              f"local lake) and wrk -c{args.connections} sharing the machine's {os.cpu_count()} cores; snippet batch "
              f"format, {BATCH} events per request; the baseline on CPU {SERVER_CPU}")
        print()
        print(f"  baseline (bare Starlette, parse only): {baseline['rps'] * BATCH:>10,.0f} events/s")
        print(f"  acknowledged by the collector:        {accepted / t_load:>10,.0f} events/s over {t_load:.0f} s "
              f"({accepted:,.0f} events, {load['non2xx']:.0f} non-2xx)   ratio to baseline {accepted / t_load / (baseline['rps'] * BATCH):.2f}")
        print(f"  engine caught up after {caught.get('engine', float('nan')):.1f} s, sink (rows written) after "
              f"{caught.get('sink', float('nan')):.1f} s")
        print(f"  sustained through the whole stack:   {sustained:>10,.0f} events/s (acknowledged, matched and in the lake;"
              f" target >= 40,000)")
        print()
        print(f"  ingest-to-webhook latency, positive rule (POST -> signed webhook at a loopback receiver):")
        print(f"    idle stack:                 p50 {statistics.median(idle):7.1f} ms   p99 {pct(idle, 0.99):7.1f} ms   (n={len(idle)})")
        print(f"    under {sustained / 2:,.0f} events/s (1/2):  p50 {statistics.median(loaded):7.1f} ms   "
              f"p99 {pct(loaded, 0.99):7.1f} ms   (n={len(loaded)}; target p99 <= 50 ms)")
        sys.stdout.flush()
    finally:
        for p in procs:
            if p.poll() is None:
                p.terminate()
                try:
                    p.wait(30)
                except subprocess.TimeoutExpired:
                    p.kill()
        shutil.rmtree(tmp, ignore_errors=True)

    if args.no_components:
        return
    components = [
        ("collector", ["bench/collector.py", "--duration", "5", "--rounds", "1"]),
        ("rules", ["bench/rules.py", "--events", "200000", "--keys", "20000", "--rules", "20", "--pending", "100000",
                   "--samples", "100"]),
        ("sink", ["bench/sink.py", "100000"]),
        ("kafka log", ["bench/kafka_log.py", "--appends", "10000"]),
    ]
    for name, cmd in components:
        if not (REPO / cmd[0]).exists():
            print(f"\n== {cmd[0]}: not present")
            continue
        print(f"\n== per component: python {' '.join(cmd)}", flush=True)
        done = subprocess.run([sys.executable, *cmd], cwd=REPO, env={**os.environ, "PYTHONPATH": str(REPO)},
                              capture_output=True, text=True)
        print(done.stdout.rstrip())  # its figures; the clients' logs (stderr) only when it failed
        if done.returncode:
            print(f"  {cmd[0]} exited with {done.returncode}:\n{done.stderr[-2000:]}")


if __name__ == "__main__":
    main()

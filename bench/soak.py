"""A month without a restart, compressed: `tripwire run` under steady realistic load for N minutes.

    python bench/soak.py [--minutes 30] [--rate R] [--visitors 20000] [--retention 10m] [--engines 1]

1. Starts ``tripwire run`` (its engine and sink in processes of their own, the embedded log with
   a short ``log.retention`` so the file must plateau) with seven realistic rules, and a webhook
   receiver in another process that answers 200 at once and counts every ``webhook-id``.
2. Finds the sustainable rate, unless ``--rate``: 30 s of load as fast as one load process sends
   it; the rate is the slowest of what was acknowledged, matched by the engine(s) and written by
   the sink(s) in that time (their counters on the collector's /metrics).
3. Soaks at half that rate (or ``--rate``) for ``--minutes``: snippet-shaped batches of 20 events
   from a bounded set of visitors, whose sessions view, add to cart, check out and order (about
   one event in six fires a trigger). Every minute it prints the RSS of the stack's processes,
   the sizes of log.db, rules-state.db and webhooks.db, the engine's watermark lag, the webhook
   backlog, what was acknowledged and delivered, and the p99 of the load's requests.
4. Stops the load and prints how long the webhook backlog took to drain; then stops the stack and
   checks the lake: acknowledged events missing from it (lost) and rows written twice (duplicates),
   and webhook ids delivered twice. Last: the RSS change (in all, and per process) between the first
   and the last fifth of the soak after ``--warmup`` minutes (while the engine's exact id memory, as
   long as the longest rule window, fills), and whether log.db stopped growing.

Asserts nothing: it prints what it saw (machines here are noisy; run it alone).
"""

from __future__ import annotations

import argparse
import json
import multiprocessing as mp
import os
import random
import re
import shutil
import signal
import subprocess
import sys
import tempfile
import time
import urllib.request
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
WRITE_KEY = "soak-web-key"
SECRET = "whsec_Y4PBOb53VF7OoWLmD0wZfsT9u0Rr2vhV"
BATCH = 20
SENDERS = 4  # load processes: one synchronous sender is bound by its own round trips, not by the stack

RULES = """
rule "abandoned cart"
  when "Product Added" as cart where cart.properties.price >= 20
  then no "Checkout Started" within 2m
  at most once per 1h
  post crm with { sku: cart.properties.sku }

rule "big order"
  when "Order Completed" as o where o.properties.total >= 100
  post crm with { order: o.properties.order_id }

rule "engaged"
  when 3 "Product Viewed" within 5m
  at most once per 30m
  post crm

rule "viewed then added"
  when "Product Viewed" as v then "Product Added" where properties.sku == v.properties.sku within 2m
  post crm with { sku: v.properties.sku }

rule "checkout then order"
  when "Checkout Started" then "Order Completed" within 10m
  post crm

rule "stalled checkout"
  when "Checkout Started" then no "Order Completed" within 5m
  post crm

rule "signup"
  when "Signed Up"
  post crm
"""

RECEIVER = r'''
import sys, uvicorn
from starlette.applications import Starlette
from starlette.responses import JSONResponse, Response
from starlette.routing import Route
seen, dups = set(), [0]
async def hook(request):
    wid = request.headers.get("webhook-id", "")
    await request.body()
    if wid in seen:
        dups[0] += 1
    else:
        seen.add(wid)
    return Response(status_code=200)
async def stats(request):
    return JSONResponse({"delivered": len(seen), "duplicates": dups[0]})
app = Starlette(routes=[Route("/hook", hook, methods=["POST"]), Route("/stats", stats)])
uvicorn.run(app, host="127.0.0.1", port=int(sys.argv[1]), log_level="warning", access_log=False)
'''


def free_port() -> int:
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def get(url: str, timeout: float = 5.0) -> str:
    with urllib.request.urlopen(url, timeout=timeout) as r:  # noqa: S310 - loopback
        return r.read().decode()


def wait_http(url: str, timeout_s: float = 120) -> None:
    deadline = time.monotonic() + timeout_s
    while True:
        try:
            get(url, 2)
            return
        except OSError:
            if time.monotonic() > deadline:
                raise RuntimeError(f"nothing answered at {url} within {timeout_s:.0f} s") from None
            time.sleep(0.2)


def metric_sum(text: str, name: str) -> float:
    """Sum of every sample of ``name`` (all labels, every process)."""
    total = 0.0
    for line in text.splitlines():
        if line.startswith(name) and (line[len(name)] in " {"):
            total += float(line.rsplit(" ", 1)[1])
    return total


def metric_max(text: str, name: str) -> float:
    values = [float(line.rsplit(" ", 1)[1]) for line in text.splitlines()
              if line.startswith(name) and line[len(name)] in " {"]
    return max(values, default=0.0)


def rss_mib(root_pid: int) -> dict[str, float]:
    """RSS (MiB) of ``root_pid`` (``run``) and of each child (tripwire run's engine and sink processes, by role)."""
    pids = [root_pid]
    try:
        out = subprocess.run(["pgrep", "-P", str(root_pid)], capture_output=True, text=True).stdout
        pids += [int(p) for p in out.split()]
    except OSError:
        pass
    rss: dict[str, float] = {}
    for pid in pids:
        try:
            status = Path(f"/proc/{pid}/status").read_text()
            argv = Path(f"/proc/{pid}/cmdline").read_bytes().split(b"\0")
        except OSError:
            continue
        m = re.search(r"VmRSS:\s+(\d+) kB", status)
        role = "run" if pid == root_pid else next((a.decode() for a in argv if a in (b"engine", b"sink")), "child")
        rss[role] = rss.get(role, 0.0) + (int(m.group(1)) / 1024 if m else 0.0)
    return rss


def size_mib(*paths: Path) -> float:
    return sum(p.stat().st_size for p in paths if p.exists()) / 2**20


# -- load -------------------------------------------------------------------------------------

def visitor_events(rng: random.Random, visitor: str, n0: int) -> list[dict]:
    """One short session: views, maybe a cart, maybe a checkout, maybe an order."""
    sku = f"sku-{rng.randrange(500)}"
    price = rng.choice([9, 19, 25, 49, 99, 149])
    names = ["Page Viewed"] + ["Product Viewed"] * rng.randint(1, 4)
    if rng.random() < 0.35:
        names.append("Product Added")
        if rng.random() < 0.5:
            names.append("Checkout Started")
            if rng.random() < 0.7:
                names.append("Order Completed")
    if rng.random() < 0.02:
        names.append("Signed Up")
    out = []
    for i, name in enumerate(names):
        props = {"sku": sku, "price": price}
        if name == "Order Completed":
            props = {"order_id": f"o-{n0 + i}", "total": price * rng.randint(1, 3)}
        ev = {"type": "track", "event": name, "anonymousId": visitor, "messageId": f"s-{n0 + i}", "properties": props}
        if name == "Page Viewed":
            ev = {"type": "page", "name": "Home", "anonymousId": visitor, "messageId": f"s-{n0 + i}",
                  "properties": {"path": "/"}}
        out.append(ev)
    return out


def load_process(url: str, rate: float, seconds: float, visitors: int, seed: int, start_id: int,
                 out: mp.Queue) -> None:  # type: ignore[type-arg]
    """Sends batches of 20 events at ``rate`` events/s (0: as fast as it can) for ``seconds``; puts
    (events acknowledged, the acknowledged batches as (first id, count), the next id, each request's ms) on ``out``."""
    import httpx

    rng = random.Random(seed)
    pending: list[dict] = []
    n = start_id
    acked = 0
    batches: list[tuple[int, int]] = []
    latency: list[float] = []
    t0 = time.monotonic()
    with httpx.Client(base_url=url, timeout=30, auth=(WRITE_KEY, "")) as client:
        while time.monotonic() - t0 < seconds:
            while len(pending) < BATCH:
                evs = visitor_events(rng, f"v-{rng.randrange(visitors)}", n)
                n += len(evs)
                pending += evs
            batch, pending = pending[:BATCH], pending[BATCH:]
            first = int(batch[0]["messageId"][2:])
            sent = time.perf_counter()
            try:
                r = client.post("/v1/batch", content=json.dumps({"batch": batch}),
                                headers={"Content-Type": "application/json"})
            except httpx.HTTPError:
                continue
            latency.append((time.perf_counter() - sent) * 1000)
            if r.status_code == 200:
                acked += len(batch)
                batches.append((first, len(batch)))
            if rate:
                ahead = acked / rate - (time.monotonic() - t0)
                if ahead > 0:
                    time.sleep(ahead)  # paces the sender to the rate; it waits for nothing
    out.put((acked, batches, n, latency))


def run_load(url: str, rate: float, seconds: float, visitors: int, seed: int, start_id: int, senders: int = SENDERS
             ) -> tuple[int, list[tuple[int, int]], int, list[float]]:
    """``senders`` processes, each sending ``rate / senders`` events/s (0: as fast as it can) with ids of
    its own range; returns (events acknowledged, acknowledged batches, the next free id, request ms sorted)."""
    q: mp.Queue = mp.Queue()  # type: ignore[type-arg]
    step = 10_000_000  # ids per sender and run: far more than one sends in a minute
    procs = [mp.Process(target=load_process, args=(url, rate / senders, seconds, visitors, seed * 100 + k,
                                                   start_id + k * step, q)) for k in range(senders)]
    for p in procs:
        p.start()
    got = [q.get(timeout=seconds + 120) for _ in procs]
    for p in procs:
        p.join(30)
    return (sum(g[0] for g in got), [b for g in got for b in g[1]], start_id + senders * step,
            sorted(ms for g in got for ms in g[3]))


# -- the stack --------------------------------------------------------------------------------

def write_site(site: Path, receiver_port: int, retention: str) -> Path:
    (site / "rules").mkdir(parents=True)
    (site / "rules" / "shop.rules").write_text(RULES)
    cfg = site / "tripwire.toml"
    cfg.write_text(f"""
data_dir = "data"
[server]
port = {free_port()}
[log]
retention = "{retention}"
[sources.web]
write_key = "{WRITE_KEY}"
origins = []
[rules]
dir = "rules"
grace = "5s"
[endpoints.crm]
url = "http://127.0.0.1:{receiver_port}/hook"
secret = "{SECRET}"
[webhooks]
allow_networks = ["127.0.0.1/32"]
[sink]
max_file_age_s = 30
[console]
enabled = false
""")
    return cfg


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--minutes", type=float, default=30)
    ap.add_argument("--rate", type=float, default=0, help="events/s to soak at (default: half the sustainable rate)")
    ap.add_argument("--visitors", type=int, default=20_000)
    ap.add_argument("--retention", default="10m", help="log.retention: short, so log.db must plateau")
    ap.add_argument("--engines", type=int, default=1)
    ap.add_argument("--warmup", type=float, default=12,
                    help="minutes left out of the RSS comparison while the stack's bounded memories fill (default 12: "
                         "the engine keeps ids exactly for the longest window, 10 min here, plus the grace and a minute)")
    args = ap.parse_args()

    tmp = Path(tempfile.mkdtemp(prefix="tripwire-soak-"))
    receiver_port = free_port()
    receiver = subprocess.Popen([sys.executable, "-c", RECEIVER, str(receiver_port)])
    cfg = write_site(tmp / "site", receiver_port, args.retention)
    port = int(re.search(r"port = (\d+)", cfg.read_text()).group(1))  # type: ignore[union-attr]
    base = f"http://127.0.0.1:{port}"
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    log_file = (tmp / "run.log").open("wb")
    run = subprocess.Popen([sys.executable, "-m", "tripwire", "--config", str(cfg), "run", "--engines", str(args.engines)],
                           cwd=cfg.parent, env=env, stdout=log_file, stderr=subprocess.STDOUT, start_new_session=True)
    data = cfg.parent / "data"
    try:
        wait_http(f"{base}/readyz")
        wait_http(f"http://127.0.0.1:{receiver_port}/stats")
        next_id = 0
        warm_acked = 0  # events of the sustainable-rate phase
        rate = args.rate
        if not rate:
            m0, t0 = get(f"{base}/metrics"), time.monotonic()
            acked, _, next_id, _ = run_load(base, 0, 30, args.visitors, 1, next_id)
            warm_acked = acked
            el = time.monotonic() - t0
            m1 = get(f"{base}/metrics")
            matched = metric_sum(m1, "tripwire_rules_events_total") - metric_sum(m0, "tripwire_rules_events_total")
            # The sink writes a file when it is full or old (30 s): what it read in the time is what the
            # events topic gained minus how much further behind it fell.
            lag = "tripwire_sink_consumer_lag"
            read = acked - (metric_sum(m1, lag) - metric_sum(m0, lag))
            sustainable = min(acked, matched, read) / el
            print(f"sustainable rate: {sustainable:,.0f} events/s (30 s as fast as {SENDERS} senders: acknowledged "
                  f"{acked / el:,.0f}/s, matched {matched / el:,.0f}/s, read by the sink {read / el:,.0f}/s)")
            rate = sustainable / 2
        print(f"soaking at {rate:,.0f} events/s for {args.minutes:g} min, {args.visitors:,} visitors, "
              f"log.retention {args.retention}, {args.engines} engine process(es)")
        print(f"{'min':>4} {'acked':>10} {'RSS MiB':>8} {'log.db':>7} {'state':>6} {'hooks':>6} {'lag s':>6} "
              f"{'backlog':>8} {'delivered':>10} {'req p99 ms':>10}")
        worst_p99 = 0.0  # the worst minute's request p99 (a state snapshot must not stall a request)
        samples: list[tuple[float, dict[str, float], float]] = []  # (minute, RSS by process, log.db MiB)
        total_acked, all_batches = 0, []
        first_id = next_id
        minutes = int(args.minutes)
        start = time.monotonic()
        for minute in range(1, minutes + 1):
            acked, batches, next_id, latency = run_load(base, rate, 60, args.visitors, 100 + minute, next_id)
            req_p99 = latency[min(len(latency) - 1, int(0.99 * len(latency)))] if latency else float("nan")
            worst_p99 = max(worst_p99, req_p99)
            total_acked += acked
            all_batches += batches
            m = get(f"{base}/metrics")
            rss = rss_mib(run.pid)
            logdb = size_mib(data / "log.db", data / "log.db-wal")
            samples.append((minute, rss, logdb))
            stats = json.loads(get(f"http://127.0.0.1:{receiver_port}/stats"))
            print(f"{minute:>4} {total_acked:>10,} {sum(rss.values()):>8.0f} {logdb:>7.0f} "
                  f"{size_mib(data / 'rules-state.db', data / 'rules-state.db-wal'):>6.0f} "
                  f"{size_mib(data / 'webhooks.db', data / 'webhooks.db-wal'):>6.0f} "
                  f"{metric_max(m, 'tripwire_rules_watermark_lag_seconds'):>6.1f} "
                  f"{metric_sum(m, 'tripwire_webhook_pending'):>8.0f} {stats['delivered']:>10,} {req_p99:>10.1f}", flush=True)
        soak_s = time.monotonic() - start
        t = time.monotonic()
        while True:
            backlog = metric_sum(get(f"{base}/metrics"), "tripwire_webhook_pending")
            if backlog == 0 or time.monotonic() - t > 600:
                break
            time.sleep(1)
        print(f"request p99 in the worst minute: {worst_p99:.1f} ms (target <= 100 ms)")
        print(f"load stopped: webhook backlog {backlog:.0f} after {time.monotonic() - t:.0f} s")
        # The sink cuts its last files by age (max_file_age_s = 30): wait for every acknowledged row.
        t = time.monotonic()
        while metric_sum(get(f"{base}/metrics"), "tripwire_sink_rows_written_total") < warm_acked + total_acked:
            if time.monotonic() - t > 180:
                print("the sink had not written every acknowledged event after 180 s")
                break
            time.sleep(1)
        stats = json.loads(get(f"http://127.0.0.1:{receiver_port}/stats"))
    finally:
        run.send_signal(signal.SIGTERM)
        try:
            run.wait(60)
        except subprocess.TimeoutExpired:
            run.kill()
        receiver.terminate()
        log_file.close()
    import duckdb

    rows = duckdb.sql(f"SELECT message_id FROM read_parquet('{data}/lake/**/*.parquet', union_by_name=true) "
                      f"WHERE message_id LIKE 's-%'").fetchall()
    ids = [int(r[0][2:]) for r in rows if int(r[0][2:]) >= first_id]
    in_lake = set(ids)
    lost = sum(1 for first, count in all_batches for i in range(first, first + count) if i not in in_lake)
    print(f"soak {soak_s / 60:.1f} min: {total_acked:,} events acknowledged ({total_acked / soak_s:,.0f}/s); "
          f"lost {lost:,}; duplicate rows {len(ids) - len(in_lake):,}; webhooks delivered {stats['delivered']:,}, "
          f"delivered twice {stats['duplicates']:,}")
    body = [s for s in samples if s[0] > args.warmup]
    if len(body) >= 5:
        fifth = max(1, len(body) // 5)

        def mean(part: list[tuple[float, dict[str, float], float]], role: str | None) -> float:
            return sum(sum(s[1].values()) if role is None else s[1].get(role, 0.0) for s in part) / len(part)
        first_rss, last_rss = mean(body[:fifth], None), mean(body[-fifth:], None)
        print(f"RSS after the {args.warmup:g}-minute warm-up, first fifth {first_rss:.0f} MiB, last fifth {last_rss:.0f} MiB: "
              f"{(last_rss - first_rss) / first_rss * 100:+.1f}% (target within ±10%)")
        print("  by process: " + ", ".join(f"{role} {mean(body[:fifth], role):.0f} -> {mean(body[-fifth:], role):.0f} MiB"
                                         for role in sorted(body[-1][1])))
        first_db = sum(s[2] for s in body[:fifth]) / fifth
        last_db = sum(s[2] for s in body[-fifth:]) / fifth
        print(f"log.db first fifth {first_db:.0f} MiB, last fifth {last_db:.0f} MiB "
              f"(retention {args.retention}: it plateaus once the window is full)")
    shutil.rmtree(tmp, ignore_errors=True)


if __name__ == "__main__":
    main()

"""Benchmark: webhook deliveries/s of the real dispatcher versus a bare httpx POST loop, in the same run.

* receiver: a minimal HTTP/1.1 keep-alive server in another process that answers
  every request 200 at once (asyncio + httptools on uvloop), counting requests
  and connections;
* baseline: ``httpx.AsyncClient.post`` of the same bodies from ``concurrency``
  tasks sharing one client (a pool of ``concurrency`` connections);
* dispatcher: N triggers appended to a real embedded log (before the clock
  starts), then the real :class:`Dispatcher` with default settings (endpoint
  ``concurrency`` 4) from ``start()`` until every trigger is delivered: reading
  the triggers topic, storing, claiming, signing, POSTing, recording.

Both run on the same event loop kind (uvloop, as ``tripwire run``; ``--loop
asyncio`` for the standard one), interleaved round by round so the machine's
load hits both alike. Prints deliveries/s of each round, the best of each and
their ratio (targets: >= 1,000 deliveries/s, ratio >= 0.5), CPU per delivery,
store transactions per delivery and connections the receiver saw.
Usage: ``python bench/webhooks.py [N] [--rounds R] [--loop uvloop|asyncio]``.
"""

from __future__ import annotations

import argparse
import asyncio
import base64
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

RECEIVER = r'''
import asyncio, sys
import httptools, uvloop

REPLY = b"HTTP/1.1 200 OK\r\ncontent-length: 2\r\ncontent-type: text/plain\r\n\r\nok"
stats = {"requests": 0, "connections": 0}

class Answer(asyncio.Protocol):
    def connection_made(self, transport):
        self.transport = transport
        self.parser = httptools.HttpRequestParser(self)
        stats["connections"] += 1

    def data_received(self, data):
        try:
            self.parser.feed_data(data)
        except httptools.HttpParserError:
            self.transport.close()

    def on_message_complete(self):
        stats["requests"] += 1
        self.transport.write(REPLY)

async def main():
    loop = asyncio.get_running_loop()
    server = await loop.create_server(Answer, "127.0.0.1", 0, backlog=1024)
    print(server.sockets[0].getsockname()[1], flush=True)
    while (line := await loop.run_in_executor(None, sys.stdin.readline)):
        print(stats["requests"], stats["connections"], flush=True)  # any line: report

uvloop.run(main())
'''


class Receiver:
    def __init__(self) -> None:
        self._proc = subprocess.Popen(
            [sys.executable, "-c", RECEIVER], stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True
        )
        assert self._proc.stdout is not None
        self.port = int(self._proc.stdout.readline())
        self.url = f"http://127.0.0.1:{self.port}/hook"

    def counts(self) -> tuple[int, int]:
        """(requests, connections) so far."""
        assert self._proc.stdin is not None and self._proc.stdout is not None
        self._proc.stdin.write("?\n")
        self._proc.stdin.flush()
        requests, connections = self._proc.stdout.readline().split()
        return int(requests), int(connections)

    def stop(self) -> None:
        assert self._proc.stdin is not None
        self._proc.stdin.close()
        self._proc.wait(timeout=10)


def make_triggers(n: int) -> list:  # type: ignore[type-arg]
    from tripwire.triggers import Trigger, trigger_id

    out = []
    for i in range(n):
        key = f"anon-{i:08x}"
        ids = [f"m-{i}-a", f"m-{i}-b"]
        events = [
            {"messageId": ids[0], "type": "track", "event": "Product Added", "timestamp": "2026-11-29T12:00:00.000Z",
             "anonymousId": key, "properties": {"sku": f"SKU-{i % 5000}", "price": 49.0, "currency": "EUR"}},
            {"messageId": ids[1], "type": "page", "timestamp": "2026-11-29T12:00:10.000Z", "anonymousId": key,
             "properties": {"path": "/cart", "title": "Your cart"}},
        ]
        out.append(Trigger(id=trigger_id("abandoned_cart", key, ids), rule="abandoned_cart", endpoint="crm", key=key,
                           fired_at="2026-11-29T12:00:30.000Z", events=events,
                           payload={"cart": f"SKU-{i % 5000}", "value": 49.0}))
    return out


async def baseline(url: str, bodies: list[bytes], concurrency: int) -> tuple[float, float]:
    """(seconds, CPU seconds) for a bare httpx POST of every body, ``concurrency`` at a time."""
    import httpx

    headers = {"content-type": "application/json", "webhook-id": "trg_0", "webhook-timestamp": "0",
               "webhook-signature": "v1," + base64.b64encode(os.urandom(32)).decode()}
    async with httpx.AsyncClient(limits=httpx.Limits(max_connections=concurrency)) as client:
        await client.post(url, content=bodies[0], headers=headers)  # connect outside the clock
        pending = iter(bodies)

        async def worker() -> None:
            for body in pending:
                response = await client.post(url, content=body, headers=headers)
                if response.status_code != 200:
                    raise RuntimeError(f"receiver answered {response.status_code}")

        started, cpu = time.perf_counter(), time.process_time()
        await asyncio.gather(*(worker() for _ in range(concurrency)))
        return time.perf_counter() - started, time.process_time() - cpu


async def dispatcher(url: str, log_path: Path, store_path: Path, group: str, n: int) -> tuple[float, float, int]:
    """(seconds, CPU seconds, store transactions) for the dispatcher to deliver the log's ``n`` triggers."""
    from tripwire.log.sqlite import SqliteLog
    from tripwire.triggers import EndpointConfig
    from tripwire.webhooks import Dispatcher, WebhooksConfig
    from tripwire.webhooks.metrics import DELIVERIES

    def delivered() -> float:  # this one metric only: collecting the whole registry costs the process CPU
        for metric in DELIVERIES.collect():
            for sample in metric.samples:
                if sample.name.endswith("_total") and sample.labels == {"endpoint": "crm", "outcome": "delivered"}:
                    return float(sample.value)
        return 0.0

    log = SqliteLog(log_path, 4)
    await log.start()
    secret = "whsec_" + base64.b64encode(os.urandom(32)).decode()
    # default settings; only loopback allowed through the SSRF guard
    settings = WebhooksConfig(allow_networks=["127.0.0.1/32"], consumer_group=group)
    service = Dispatcher(log, store_path, settings, {"crm": EndpointConfig(url=url, secret=secret)})
    before = delivered()
    try:
        started, cpu = time.perf_counter(), time.process_time()
        await service.start()
        while delivered() - before < n:
            if service.failed:
                raise RuntimeError(f"dispatcher failed: {service.error}")
            await asyncio.sleep(0.01)
        elapsed, cpu = time.perf_counter() - started, time.process_time() - cpu
        transactions = service.store.transactions
    finally:
        await service.stop()
        await log.stop()
    return elapsed, cpu, transactions


async def fill_log(log_path: Path, triggers: list) -> None:  # type: ignore[type-arg]
    from tripwire.log import TRIGGERS
    from tripwire.log.sqlite import SqliteLog

    log = SqliteLog(log_path, 4)
    await log.start()
    entries = [(t.key.encode(), t.to_json()) for t in triggers]
    for i in range(0, len(entries), 5000):
        await log.append(TRIGGERS, entries[i : i + 5000])
    await log.stop()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("n", nargs="?", type=int, default=20_000, help="triggers per round (default 20,000)")
    parser.add_argument("--rounds", type=int, default=3, help="interleaved rounds of each (default 3)")
    parser.add_argument("--loop", choices=("uvloop", "asyncio"), default="uvloop")
    args = parser.parse_args()

    from tripwire.webhooks.endpoint import build_body

    def run(coro):  # type: ignore[no-untyped-def]
        if args.loop == "uvloop":
            import uvloop

            return uvloop.run(coro)
        return asyncio.run(coro)

    concurrency = 4  # the endpoint default
    triggers = make_triggers(args.n)
    bodies = [build_body(t, "trigger.fired") for t in triggers]
    receiver = Receiver()
    rates: dict[str, list[float]] = {"baseline": [], "dispatcher": []}
    cpu_per: dict[str, list[float]] = {"baseline": [], "dispatcher": []}
    tx_per: list[float] = []
    try:
        with tempfile.TemporaryDirectory() as d:
            tmp = Path(d)
            run(fill_log(tmp / "log.db", triggers))
            run(baseline(receiver.url, bodies[:2000], concurrency))  # warm-up: imports, first connections
            print(f"{args.n:,} triggers per round, body {sum(map(len, bodies)) / len(bodies):.0f} bytes, "
                  f"concurrency {concurrency}, loop {args.loop}, {os.cpu_count()} CPUs, "
                  f"load average {os.getloadavg()[0]:.2f} at start")
            for i in range(args.rounds):
                seconds, cpu = run(baseline(receiver.url, bodies, concurrency))
                rates["baseline"].append(args.n / seconds)
                cpu_per["baseline"].append(cpu / args.n)
                seconds, cpu, transactions = run(
                    dispatcher(receiver.url, tmp / "log.db", tmp / f"webhooks-{i}.db", f"bench-{i}", args.n)
                )
                rates["dispatcher"].append(args.n / seconds)
                cpu_per["dispatcher"].append(cpu / args.n)
                tx_per.append(transactions / args.n)
                print(f"round {i + 1}: baseline {rates['baseline'][-1]:>7,.0f}/s   dispatcher "
                      f"{rates['dispatcher'][-1]:>7,.0f}/s   ratio {rates['dispatcher'][-1] / rates['baseline'][-1]:.2f}"
                      f"   (load average {os.getloadavg()[0]:.2f})")
        requests, connections = receiver.counts()
    finally:
        receiver.stop()
    best_base, best_disp = max(rates["baseline"]), max(rates["dispatcher"])
    ratios = [d / b for d, b in zip(rates["dispatcher"], rates["baseline"], strict=True)]
    print(f"bare httpx POST loop:   {best_base:>8,.0f} requests/s    CPU {1e6 * min(cpu_per['baseline']):.0f} us/request")
    print(f"dispatcher (defaults):  {best_disp:>8,.0f} deliveries/s  CPU {1e6 * min(cpu_per['dispatcher']):.0f} us/delivery"
          f"   (target >= 1,000/s)")
    print(f"ratio of the best:      {best_disp / best_base:.2f}   per round {min(ratios):.2f} .. {max(ratios):.2f}"
          f"   (target >= 0.5)")
    print(f"store transactions per delivery: {min(tx_per):.3f}; receiver: {requests:,} requests on "
          f"{connections} connections")


if __name__ == "__main__":
    main()

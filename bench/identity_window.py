"""The identity-link window on Kafka: from a link's acknowledgement at one collector to its use at another.

    python bench/identity_window.py [--samples 300] [--gap-ms 20]

Starts a tansu broker (in memory) and two Kafka logs, as two collectors have:
"collector 1" appends an identify's event with its link (``append(..., links)``)
and, the moment that returns (when the collector would answer 200), the clock
starts; "collector 2" asks ``links()`` for that user every millisecond (what it
does for every request with a userId) and the clock stops when the link is
there. Prints the distribution of that window; asserts nothing.
"""

from __future__ import annotations

import argparse
import asyncio
import statistics
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from tests.fixtures.tansu import TansuBroker  # noqa: E402
from tripwire.identity import CLAIMED, Link  # noqa: E402
from tripwire.log import EVENTS  # noqa: E402
from tripwire.log.kafka import KafkaLog  # noqa: E402


async def main(samples: int, gap_ms: int) -> None:
    with tempfile.TemporaryDirectory() as tmp, TansuBroker(Path(tmp) / "tansu") as broker:
        one = KafkaLog(broker.bootstrap, spill_dir=Path(tmp) / "c1" / "spill")
        two = KafkaLog(broker.bootstrap, spill_dir=Path(tmp) / "c2" / "spill")
        async with one, two:
            await two.links(())  # collector 2 started: it has read the topic and follows it
            windows = []
            for i in range(samples):
                user = f"user-{i}"
                await one.append(EVENTS, [(f"anon-{i}".encode(), b"{}")],
                                 [Link(user, f"anon-{i}", CLAIMED, int(time.time() * 1000), "shop")])
                acked = time.perf_counter()
                while user not in await two.links([user]):
                    await asyncio.sleep(0.001)
                windows.append((time.perf_counter() - acked) * 1000)
                await asyncio.sleep(gap_ms / 1000)
    windows.sort()
    q = statistics.quantiles(windows, n=100)
    print(f"identity link window on tansu, {samples} links, one every ~{gap_ms} ms:")
    print(f"  p50 {q[49]:.1f} ms   p90 {q[89]:.1f} ms   p99 {q[98]:.1f} ms   max {windows[-1]:.1f} ms")


if __name__ == "__main__":
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--samples", type=int, default=300)
    ap.add_argument("--gap-ms", type=int, default=20, help="pause between links (the follower idles in a fetch)")
    args = ap.parse_args()
    asyncio.run(main(args.samples, args.gap_ms))

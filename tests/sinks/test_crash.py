"""kill -9 of a ``tripwire sink`` process at random points, then restart: every event exactly once.

Events keep arriving while the sink runs (so wall-clock rotation cuts at
unpredictable offsets), with client retries (repeated messageIds) and late
events mixed in; files are small so kills land in the middle of writes. After
every kill the lake must hold only whole, readable files and no event twice;
at the end it must hold every event exactly once.
"""

from __future__ import annotations

import asyncio
import os
import random
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from tripwire.sinks.state import load_state
from tests.sinks.helpers import BASE_MS, DAY_MS, event, lake_table, send, wait_caught_up
from tests.sinks.lakes import LakeSetup, make_lake
from tripwire.log.sqlite import SqliteLog

REPO = Path(__file__).resolve().parents[2]


def start_sink(lake: LakeSetup, data_dir: Path) -> subprocess.Popen[bytes]:
    """``python -m tripwire sink`` on the SQLite log in ``data_dir``; stderr goes to ``sink.err``."""
    env = {k: v for k, v in os.environ.items() if not k.startswith(("TRIPWIRE_", "AWS_"))}
    env.update(lake.env())
    env.update({
        "TRIPWIRE_DATA_DIR": str(data_dir),
        "TRIPWIRE_SINK__MAX_FILE_ROWS": "40",
        "TRIPWIRE_SINK__MAX_FILE_AGE_S": "0.15",
        "TRIPWIRE_SINK__MAX_LATE_FILE_AGE_S": "0.4",
        "TRIPWIRE_SINK__POLL_MAX_RECORDS": "300",
        "TRIPWIRE_SINK__PROMOTE": '{ price = "number" }',
    })
    with open(data_dir / "sink.err", "ab") as err:
        err.write(f"--- sink started at {time.strftime('%H:%M:%S')}\n".encode())
        err.flush()
        return subprocess.Popen([sys.executable, "-m", "tripwire", "--log-level", "info", "sink"], cwd=REPO,
                                env=env, stdout=subprocess.DEVNULL, stderr=err)


def sink_log(data_dir: Path, tail: int = 6000) -> str:
    """The end of every sink run's stderr (info log), for failure messages."""
    path = data_dir / "sink.err"
    return path.read_text(errors="replace")[-tail:] if path.exists() else "(no sink.err)"


def gone(proc: subprocess.Popen[bytes], data_dir: Path) -> str | None:
    """Why the sink can no longer make progress: it exited, or its task died (process still up)."""
    code = proc.poll()
    if code is not None:
        return f"exit code {code}"
    last_run = sink_log(data_dir, tail=1 << 20).rsplit("--- sink started", 1)[-1]
    return "its task died (see the log)" if "sink stopped on an error" in last_run else None


def lake_states(lake: LakeSetup) -> str:
    out = []
    for partition in range(4):
        st = load_state(lake.lake, "events", partition)
        out.append(f"p{partition}: " + ("no state" if st is None else f"resume {st.resume} pending {st.pending}"))
    return "\n".join(out)


def check_lake(lake: LakeSetup) -> set[str]:
    """Every visible file is whole and no event is in the lake twice; returns the ids."""
    df = lake_table(lake.lake)  # reads every file completely: a partial one would raise
    dupes = df.message_id[df.message_id.duplicated()].tolist()
    assert not dupes, f"events visible twice: {dupes[:5]} in {sorted(set(df[df.message_id.isin(dupes)]._file))[:4]}"
    return set(df.message_id)


@pytest.mark.parametrize("kind,rounds", [("local", 10), ("s3", 6)])
async def test_kill_9_at_random_points_then_restart_gives_every_event_once(
    kind: str, rounds: int, tmp_path: Path, request: pytest.FixtureRequest
) -> None:
    bucket = request.getfixturevalue("s3_bucket") if kind == "s3" else None
    lake = make_lake(kind, tmp_path, bucket)
    rng = random.Random(0xC0FFEE)
    log = SqliteLog(tmp_path / "log.db", 4)
    await log.start()
    sent: dict[str, dict[str, object]] = {}
    n = 0

    def batch(size: int) -> list[dict[str, object]]:
        nonlocal n
        out = []
        for _ in range(size):
            roll = rng.random()
            if roll < 0.08 and sent:  # a client retry of something sent before
                out.append(sent[rng.choice(list(sent))])
                continue
            at = BASE_MS - rng.randint(1, 4) * DAY_MS if roll < 0.13 else None  # late event
            e = event(n, at_ms=at, user=f"u{rng.randint(0, 40)}")
            n += 1
            sent[e["messageId"]] = e  # type: ignore[index]
            out.append(e)
        return out

    async def feed(stop: asyncio.Event) -> None:
        while not stop.is_set():
            await send(log, batch(rng.randint(5, 30)))
            await asyncio.sleep(rng.uniform(0.01, 0.06))  # paces the feed (not a wait)

    proc: subprocess.Popen[bytes] | None = None
    try:
        await send(log, batch(400))
        for _ in range(rounds):
            proc = start_sink(lake, tmp_path)
            stop = asyncio.Event()
            feeder = asyncio.create_task(feed(stop))
            # paces the fault: a kill at a random point (~1 s of it is interpreter start-up)
            await asyncio.sleep(rng.uniform(1.1, 2.4))
            proc.send_signal(signal.SIGKILL)
            proc.wait(timeout=10)
            stop.set()
            await feeder
            await asyncio.to_thread(check_lake, lake)

        final = proc = start_sink(lake, tmp_path)
        # A loaded machine may need a while to write the backlog (hundreds of small fsynced
        # files): the wait lasts as long as the records left keep shrinking (bounded overall);
        # a stuck sink fails after stall_s without progress, a dead one at once.
        try:
            await wait_caught_up(lake.lake, await log.end_offsets("events"), timeout_s=150, stall_s=30,
                                 alive=lambda: gone(final, tmp_path))
        except (TimeoutError, AssertionError) as exc:
            states = await asyncio.to_thread(lake_states, lake)
            raise AssertionError(
                f"{exc}\n--- lake state:\n{states}\n--- sink stderr (tail):\n{sink_log(tmp_path)}") from None
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(timeout=30) == 0, sink_log(tmp_path)
    finally:
        if proc is not None and proc.poll() is None:
            proc.kill()
            proc.wait(timeout=10)
        await log.stop()

    assert await asyncio.to_thread(check_lake, lake) == set(sent)
    df = lake.duckdb("SELECT message_id, anonymous_id, CAST(date AS VARCHAR) AS d FROM lake")
    assert len(df) == len(sent) and set(df.message_id) == set(sent)
    for row in df.itertuples():
        e = sent[row.message_id]
        assert row.anonymous_id == e["anonymousId"] and row.d == str(e["timestamp"])[:10]

"""Backtests started from the console: one rules file over a range of lake days, in a worker thread.

A :class:`Job` runs :func:`tripwire.rules.backtest` over :class:`tripwire.rules.LakeReader`
(the sink's lake: ``[sink] lake_url``), reporting progress as it goes (the page shows a bar
over server-sent events). One job runs at a time; finished jobs are kept (the last
:data:`KEEP`) so their pages stay readable. Rules files are chosen among the rules
directory's, never by path.
"""

from __future__ import annotations

import asyncio
import itertools
import logging
from dataclasses import dataclass
from pathlib import Path

from tripwire.config import Config
from tripwire.logs import redact
from tripwire.rules import BacktestResult, LakeReader, RulesError, backtest
from tripwire.sinks import sink_config

from .rulefiles import load_file

logger = logging.getLogger(__name__)

KEEP = 10
SAMPLES = 10


@dataclass
class Job:
    id: str
    file: str
    since: str | None
    until: str | None
    lake: str
    state: str = "starting"  # starting | counting | running | done | failed
    total: int | None = None
    done: int = 0
    error: str = ""
    result: BacktestResult | None = None

    @property
    def fraction(self) -> float | None:
        if self.state == "done":
            return 1.0
        return min(1.0, self.done / self.total) if self.total else None


class Backtests:
    def __init__(self, config: Config) -> None:
        self.config = config
        sink = sink_config(config)
        self.lake = sink.lake_url
        self.storage_options = sink.storage_options() if sink.is_s3 else {}
        self.jobs: dict[str, Job] = {}
        self._ids = itertools.count(1)
        self._tasks: set[asyncio.Task[None]] = set()

    @property
    def running(self) -> Job | None:
        return next((j for j in self.jobs.values() if j.state in ("starting", "counting", "running")), None)

    def start(self, path: Path, since: str | None, until: str | None) -> Job:
        job = Job(str(next(self._ids)), path.name, since, until, redact(self.lake))
        self.jobs[job.id] = job
        for old in list(self.jobs)[:-KEEP]:
            del self.jobs[old]
        task = asyncio.create_task(asyncio.to_thread(self._run, job, path), name=f"console-backtest-{job.id}")
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)
        return job

    def _run(self, job: Job, path: Path) -> None:
        try:
            rules = load_file(self.config, path)
            if rules.errors:
                first = next(iter(rules.errors.values()))
                raise RulesError(first[0].headline() if first else f"{path.name} has errors")
            job.state = "counting"
            reader = LakeReader(self.lake, self.storage_options or None)
            days = reader.days(job.since, job.until)
            job.total = reader.count(days)
            job.state = "running"

            def progress(done: int) -> None:
                job.done = done

            job.result = backtest(rules.plan, reader.envelopes(days), samples=SAMPLES, progress=progress)
            job.done = job.result.events
            job.state = "done"
        except (RulesError, OSError, ValueError) as exc:
            job.state, job.error = "failed", redact(str(exc))
        except Exception as exc:  # noqa: BLE001 - a job must end, and say why
            logger.exception("console backtest %s failed", job.id)
            job.state, job.error = "failed", redact(f"{type(exc).__name__}: {exc}")

    async def stop(self) -> None:
        for task in list(self._tasks):
            task.cancel()  # the thread finishes its day; nothing waits for it

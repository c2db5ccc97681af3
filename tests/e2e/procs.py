"""Tripwire processes for the end-to-end tests: start, kill -9, SIGTERM, restart; output in a file.

Output goes to a file (not a pipe), so a process never blocks on a full pipe
and its log survives a kill for the failure message.
"""

from __future__ import annotations

import os
import re
import signal
import subprocess
import sys
import time
from collections.abc import Mapping, Sequence
from pathlib import Path

from tests.fixtures.tansu import free_port, wait_for_port

REPO = Path(__file__).resolve().parents[2]
LISTENING = re.compile(r"listening on http://[\w.\-\[\]:]+:(\d+)")


class Proc:
    """``python -m tripwire *args`` as a subprocess; ``restart()`` runs the same command again."""

    def __init__(self, name: str, args: Sequence[str], log_dir: Path, env: Mapping[str, str] | None = None,
                 port: int | None = None) -> None:
        self.name = name
        self.args = list(args)
        self.env = {**os.environ, **(env or {})}
        self.env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(REPO), self.env.get("PYTHONPATH", "")]))
        self.env.setdefault("PYTHONUNBUFFERED", "1")
        self.log_path = log_dir / f"{name}.log"
        self.port = port
        self.proc: subprocess.Popen[bytes] | None = None
        self.starts = 0

    @property
    def running(self) -> bool:
        return self.proc is not None and self.proc.poll() is None

    def start(self, wait_text: str | None = None, timeout_s: float = 60) -> Proc:
        assert not self.running, f"{self.name} is already running"
        self.starts += 1
        with self.log_path.open("ab") as out:
            out.write(f"----- start #{self.starts}: tripwire {' '.join(self.args)}\n".encode())
            out.flush()
            self.proc = subprocess.Popen([sys.executable, "-m", "tripwire", *self.args], cwd=REPO, env=self.env,
                                         stdout=out, stderr=subprocess.STDOUT, start_new_session=True)
        if self.port is not None:
            wait_for_port(self.port, timeout_s, self.proc)
        if wait_text is not None:
            self.wait_output(wait_text, timeout_s, count=self.output().count(wait_text) + 1)
        return self

    def output(self) -> str:
        return self.log_path.read_text(errors="replace") if self.log_path.exists() else ""

    def wait_output(self, text: str, timeout_s: float, count: int = 1) -> None:
        deadline = time.monotonic() + timeout_s
        while self.output().count(text) < count:
            if self.proc is not None and self.proc.poll() is not None:
                raise AssertionError(f"{self.name} exited with {self.proc.returncode}:\n{self.output()[-4000:]}")
            if time.monotonic() > deadline:
                raise AssertionError(f"{self.name} never logged {text!r} within {timeout_s}s:\n{self.output()[-4000:]}")
            time.sleep(0.05)

    def kill9(self) -> None:
        if self.running:
            assert self.proc is not None
            os.killpg(self.proc.pid, signal.SIGKILL)
        if self.proc is not None:
            self.proc.wait(10)

    def stop(self, timeout_s: float = 30) -> int:
        """SIGTERM and wait; returns the exit code (a hang is killed and reported as an error)."""
        if self.proc is None:
            return 0
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
        try:
            return self.proc.wait(timeout_s)
        except subprocess.TimeoutExpired:
            self.kill9()
            raise AssertionError(f"{self.name} did not stop within {timeout_s}s:\n{self.output()[-4000:]}") from None

    def restart(self, wait_text: str | None = None, timeout_s: float = 60) -> None:
        self.kill9()
        self.start(wait_text, timeout_s)


def collector(name: str, config: Path, log_dir: Path, env: Mapping[str, str], data_dir: Path) -> Proc:
    """A collector on a fixed free port (so a restart listens where clients expect it)."""
    port = free_port()
    return Proc(name, ["--config", str(config), "collector", "--port", str(port)], log_dir,
                {**env, "TRIPWIRE_DATA_DIR": str(data_dir)}, port=port)

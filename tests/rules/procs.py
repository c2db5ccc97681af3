"""Running ``tripwire engine`` as a real subprocess (for kill -9 and scale-out tests)."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]


class EngineProcess:
    def __init__(self, config: Path, log_path: Path, *extra: str, env_overrides: dict[str, str] | None = None) -> None:
        env = dict(os.environ)
        env.update(env_overrides or {})
        env["PYTHONPATH"] = str(REPO) + os.pathsep + env.get("PYTHONPATH", "")
        self.log_path = log_path
        self._log = log_path.open("ab")
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "tripwire", "--config", str(config), "--log-level", "info", "engine", *extra],
            cwd=REPO, env=env, stdout=self._log, stderr=subprocess.STDOUT,
        )

    def output(self) -> str:
        return self.log_path.read_text(errors="replace")

    def kill9(self) -> None:
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGKILL)
        self.proc.wait(timeout=10)
        self._log.close()

    def terminate(self, timeout_s: float = 15) -> int:
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
        try:
            code = self.proc.wait(timeout=timeout_s)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            code = self.proc.wait(timeout=10)
        self._log.close()
        return code

    def last_assignment(self) -> list[int] | None:
        """The partitions it owns by its log (assigned, less those revoked since), or None before any."""
        owned: set[int] | None = None
        for line in self.output().splitlines():
            for what in ("partitions assigned: ", "partitions revoked: "):
                if what in line:
                    parts = {int(x) for x in line.split(what, 1)[1].strip(" []").split(",") if x.strip()}
                    owned = (owned or set()) | parts if what.endswith("assigned: ") else (owned or set()) - parts
        return None if owned is None else sorted(owned)

    def wait_output(self, text: str, timeout_s: float, count: int = 1) -> None:
        deadline = time.monotonic() + timeout_s
        while self.output().count(text) < count:
            if self.proc.poll() is not None:
                raise AssertionError(f"engine exited with {self.proc.returncode}:\n{self.output()[-3000:]}")
            if time.monotonic() > deadline:
                raise AssertionError(f"engine never logged {text!r}:\n{self.output()[-3000:]}")
            time.sleep(0.05)

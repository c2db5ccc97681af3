"""The CLI entry point as a shell pipeline sees it."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[3]


def test_a_reader_that_goes_away_stops_the_command_quietly(tmp_path: Path) -> None:
    # `tripwire rules explain ... | head -1`: the pipe closes after one line (the explanation of
    # 400 rules is far more than a pipe holds); no traceback follows.
    rules = tmp_path / "many.rules"
    rules.write_text("".join(f'rule "r{i}" when AddToCart then no Checkout within 30s post crm\n' for i in range(400)))
    proc = subprocess.run(
        f"'{sys.executable}' -m tripwire rules explain '{rules}' | head -1",
        shell=True, cwd=ROOT, capture_output=True, text=True, timeout=60,
    )
    assert proc.returncode == 0 and proc.stdout.count("\n") == 1
    assert "Traceback" not in proc.stderr and "BrokenPipe" not in proc.stderr, proc.stderr

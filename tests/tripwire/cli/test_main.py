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
    errors = tmp_path / "stderr"
    with errors.open("wb") as stderr:
        tripwire = subprocess.Popen([sys.executable, "-m", "tripwire", "rules", "explain", str(rules)],
                                    cwd=ROOT, stdout=subprocess.PIPE, stderr=stderr)
        assert tripwire.stdout is not None
        head = subprocess.Popen(["head", "-1"], stdin=tripwire.stdout, stdout=subprocess.PIPE, text=True)
        tripwire.stdout.close()  # head holds the only read end: the pipe closes when it exits
        out, _ = head.communicate(timeout=60)
        code = tripwire.wait(60)
    assert out.count("\n") == 1
    assert code == 141, f"tripwire exited {code}, not 128 + SIGPIPE"  # its own status, not the pipeline's
    stderr_text = errors.read_text()
    assert "Traceback" not in stderr_text and "BrokenPipe" not in stderr_text, stderr_text

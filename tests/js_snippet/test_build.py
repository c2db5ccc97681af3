"""The shipped tracker (collector/static/t.js) is the build of js-snippet/src, and it is small.

The freshness check rebuilds with the pinned esbuild into a temp dir and compares bytes; it needs
``js-snippet/node_modules`` (``npm ci --prefix js-snippet``, which ``.ci/run`` does).
"""

from __future__ import annotations

import gzip
import shutil
import subprocess
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]
SNIPPET = REPO / "js-snippet"
SHIPPED = REPO / "collector" / "static" / "t.js"
BUDGET_BYTES = 1500  # the product target (gzip -9), printed for comparison
LIMIT_BYTES = 2048  # the test's hard limit
PEERS = {"Plausible": 1300, "Snowplow": 18000, "RudderStack": 35000, "Segment": 44000, "PostHog": 127000}


def test_shipped_tracker_is_built_from_the_current_source(tmp_path: Path) -> None:
    node = shutil.which("node")
    assert node, "node is needed to check the tracker build (Node 20+)"
    assert (SNIPPET / "node_modules" / "esbuild").is_dir(), "run `npm ci --prefix js-snippet` first"
    out = tmp_path / "t.js"
    result = subprocess.run([node, str(SNIPPET / "build.mjs"), str(out)], capture_output=True, text=True, timeout=60, check=False)
    assert result.returncode == 0, result.stderr
    assert out.read_bytes() == SHIPPED.read_bytes(), (
        "collector/static/t.js is out of date with js-snippet/src: run `npm run build --prefix js-snippet` and commit it"
    )


def test_tracker_fits_the_size_budget() -> None:
    code = SHIPPED.read_bytes()
    size = len(gzip.compress(code, compresslevel=9, mtime=0))
    peers = ", ".join(f"{name} {bytes_ / size:.1f}x" for name, bytes_ in PEERS.items())
    print(f"\ntracker: {len(code)} bytes minified, {size} bytes gzip -9 (target {BUDGET_BYTES}, limit {LIMIT_BYTES}); peers: {peers}")
    assert size <= LIMIT_BYTES, f"t.js is {size} bytes gzip -9, over the {LIMIT_BYTES}-byte limit"
    assert b"\n" not in code.rstrip(b"\n") and code.startswith(b"(()=>{"), "expected one minified IIFE"

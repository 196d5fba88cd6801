"""``python -m benchmarks`` without the [bench] extra says so in one line and stops."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent


def test_the_benchmarks_stop_at_once_with_one_line_without_the_bench_extra() -> None:
    # -S: no site-packages, so none of the extra's packages can be found.
    done = subprocess.run(
        [sys.executable, "-S", "-m", "benchmarks", "--quick"],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=30,
    )
    assert done.returncode != 0
    assert "Traceback" not in done.stderr
    lines = done.stderr.strip().splitlines()
    assert len(lines) == 1, done.stderr
    assert "[bench]" in lines[0]
    assert "rich" in lines[0]

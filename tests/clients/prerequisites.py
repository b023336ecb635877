"""What the JS client tests need, and a skip (a failure in CI) that names how to install it."""

from __future__ import annotations

import os
import shutil
import subprocess
from pathlib import Path
from typing import NoReturn

import pytest

from tests.clients.chromium import CHROMIUM

CLIENTS = Path(__file__).resolve().parent
NODE_MODULES = CLIENTS / "node_modules"
# .ci/run sets it: there a missing prerequisite fails the test, so CI can't pass by skipping.
REQUIRE_ENV = "FORWARDER_REQUIRE_CLIENTS"
NPM_HINT = "make tests/clients/node_modules/.installed (npm ci --prefix tests/clients)"


def missing(what: str, install: str) -> NoReturn:
    reason = f"{what}: install with `{install}`"
    if os.environ.get(REQUIRE_ENV) == "1":
        pytest.fail(f"{reason} ({REQUIRE_ENV}=1 requires this test to run)", pytrace=False)
    pytest.skip(reason)


def require_node() -> str:
    node = shutil.which("node")
    if node is None:
        missing("node is not on PATH", "apt-get install -y nodejs npm")
    return node


def require_packages(*names: str) -> Path:
    """node_modules, once every package in `names` is installed there."""
    absent = [name for name in names if not (NODE_MODULES / name / "package.json").exists()]
    if absent:
        missing(f"npm packages not installed in {NODE_MODULES}: {', '.join(absent)}", NPM_HINT)
    return NODE_MODULES


def require_chromium() -> Path:
    if not os.access(CHROMIUM, os.X_OK):
        missing(
            f"Chromium is not installed ({CHROMIUM})",
            "apt-get install -y --no-install-recommends chromium",
        )
    return CHROMIUM


def version_of(program: Path | str) -> str:
    """`program --version`'s first line, for the run's summary ('' when it has none)."""
    try:
        answer = subprocess.run(
            [str(program), "--version"], capture_output=True, text=True, timeout=20, check=False
        )
    except (OSError, subprocess.TimeoutExpired):
        return ""
    return answer.stdout.strip().splitlines()[0] if answer.stdout.strip() else ""

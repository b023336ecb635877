"""deploy/forwarder.service: systemd's own security rating, and the lines a deployment needs."""

from __future__ import annotations

import re
import shutil
import subprocess
from pathlib import Path

import pytest

UNIT = Path(__file__).resolve().parents[2] / "deploy" / "forwarder.service"
MOST_EXPOSURE = 2.5


def unit_settings() -> dict[str, list[str]]:
    settings: dict[str, list[str]] = {}
    for line in UNIT.read_text().splitlines():
        if line and not line.startswith(("#", "[")):
            key, _, value = line.partition("=")
            settings.setdefault(key, []).append(value)
    return settings


def test_systemd_analyze_security_rates_the_unit_at_most_2_5() -> None:
    tool = shutil.which("systemd-analyze")
    if tool is None:
        pytest.skip("systemd-analyze not found (Debian: apt-get install systemd)")
    # --offline reads the unit file itself: no running systemd, no installed binary needed.
    result = subprocess.run(
        [tool, "security", "--offline=yes", "--no-pager", str(UNIT)],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert result.returncode == 0, result.stderr
    found = re.search(r"Overall exposure level for forwarder\.service: (\d+\.\d+)", result.stdout)
    assert found, result.stdout + result.stderr
    exposure = float(found.group(1))
    assert exposure <= MOST_EXPOSURE, result.stdout


def test_systemd_parses_every_line_of_the_unit() -> None:
    """A misspelt key or value is ignored by systemd with a warning: the hardening would
    silently be missing. `verify` names them (the host's binaries are not installed here,
    so only its complaint about ExecStart is expected)."""
    tool = shutil.which("systemd-analyze")
    if tool is None:
        pytest.skip("systemd-analyze not found (Debian: apt-get install systemd)")
    result = subprocess.run(
        [tool, "verify", "--man=no", str(UNIT)],
        capture_output=True,
        text=True,
        timeout=60,
    )
    complaints = [
        line
        for line in (result.stdout + result.stderr).splitlines()
        if line and "/opt/forwarder/venv/bin/forwarder is not executable" not in line
    ]
    assert complaints == []


def test_unit_runs_the_installed_venv_and_restarts_after_a_drain() -> None:
    settings = unit_settings()
    assert settings["ExecStart"] == [
        "/opt/forwarder/venv/bin/forwarder run --config /etc/forwarder/config.toml"
    ]
    # A missing env file fails the start rather than running on the config's fallbacks.
    assert settings["EnvironmentFile"] == ["/etc/forwarder/env"]
    assert settings["ExecReload"] == ["/bin/kill -HUP $MAINPID"]
    # A drain exits 0: restart it anyway, but not a config error or a locked storage (2).
    assert settings["Restart"] == ["always"]
    assert settings["RestartPreventExitStatus"] == ["2"]
    assert settings["UMask"] == ["0077"]
    assert settings["Type"] == ["notify"]
    assert settings["MemoryDenyWriteExecute"] == ["true"]

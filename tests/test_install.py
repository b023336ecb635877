"""The README's host install: a wheel in a fresh venv outside the checkout, `forwarder init`,
`forwarder run` against the simulator of the same venv, one event through, SIGTERM exits 0."""

from __future__ import annotations

import json
import os
import re
import shutil
import signal
import stat
import subprocess
import sys
import time
import tomllib
import urllib.error
import urllib.request
from pathlib import Path
from typing import Any

from forwarder.config import load_config
from tests.processes import free_port

ROOT = Path(__file__).resolve().parent.parent
# What the wheel is built from: everything else in the checkout (.venv, var) stays out.
SOURCES = ("pyproject.toml", "README.md", "config.toml", "forwarder")


def run(*command: str | Path, cwd: Path, timeout: float = 300) -> str:
    result = subprocess.run(
        [str(part) for part in command],
        cwd=cwd,
        env=clean_env(),
        capture_output=True,
        text=True,
        timeout=timeout,
    )
    assert result.returncode == 0, f"{command}: {result.stdout}\n{result.stderr}"
    return result.stdout


def clean_env() -> dict[str, str]:
    """The environment minus anything pointing Python at the checkout or its venv."""
    drop = {"PYTHONPATH", "VIRTUAL_ENV", "PYTHONHOME", "AMPLITUDE_API_KEY", "ITERABLE_API_KEY"}
    env = {key: value for key, value in os.environ.items() if key not in drop}
    env["PATH"] = os.pathsep.join(
        part for part in env.get("PATH", "").split(os.pathsep) if str(ROOT) not in part
    )
    return env


def http_json(url: str, body: bytes | None = None) -> tuple[int, Any]:
    request = urllib.request.Request(
        url, data=body, headers={"Content-Type": "application/json"} if body else {}
    )
    try:
        with urllib.request.urlopen(request, timeout=5) as response:
            return response.status, json.loads(response.read() or b"null")
    except urllib.error.HTTPError as error:
        return error.code, None


def wait_for(url: str, process: subprocess.Popen[bytes], log: Path, timeout: float = 30) -> None:
    """Until `url` answers 200, bounded; fails at once if the process exits."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        assert process.poll() is None, log.read_text()
        try:
            if http_json(url)[0] == 200:
                return
        except (urllib.error.URLError, ConnectionError):
            pass
        time.sleep(0.1)
    raise AssertionError(f"{url} did not answer 200 within {timeout} s: {log.read_text()}")


def operator_edits(text: str, replacements: dict[str, str]) -> str:
    """Set `key = value` lines as an operator would; each key must be in the sample once."""
    for key, value in replacements.items():
        text, count = re.subn(rf"(?m)^{key} = .*$", f"{key} = {value}", text)
        assert count == 1, f"{key}: {count} lines in the sample"
    return text


def test_wheel_installs_into_a_fresh_venv_and_runs_from_there(tmp_path: Path) -> None:
    source = tmp_path / "source"
    source.mkdir()
    for name in SOURCES:
        if (ROOT / name).is_dir():
            # symlinks=True: forwarder/config.toml stays the link to ../config.toml it is.
            shutil.copytree(
                ROOT / name,
                source / name,
                symlinks=True,
                ignore=shutil.ignore_patterns("__pycache__"),
            )
        else:
            shutil.copy(ROOT / name, source / name)
    python = sys.executable
    run(python, "-m", "pip", "wheel", "--no-deps", "-w", tmp_path / "dist", ".", cwd=source)
    (wheel,) = (tmp_path / "dist").glob("forwarder-*.whl")

    venv = tmp_path / "opt" / "venv"
    run(python, "-m", "venv", venv, cwd=tmp_path)
    run(venv / "bin" / "python", "-m", "pip", "install", "--quiet", wheel, cwd=tmp_path)
    installed = run(
        venv / "bin" / "python", "-c", "import forwarder; print(forwarder.__file__)", cwd=tmp_path
    ).strip()
    assert Path(installed).is_relative_to(venv), installed
    assert not Path(installed).resolve().is_relative_to(ROOT)
    packaged = Path(installed).parent / "config.toml"
    assert not packaged.is_symlink()
    assert packaged.read_bytes() == (ROOT / "config.toml").read_bytes()
    forwarder = venv / "bin" / "forwarder"
    assert forwarder.read_text().startswith(f"#!{venv}/bin/python")

    # `forwarder init`: the shipped sample, whole, readable by the owner and group only.
    config = tmp_path / "etc" / "config.toml"
    run(forwarder, "init", "--config", config, cwd=tmp_path)
    assert config.read_bytes() == (ROOT / "config.toml").read_bytes()
    assert stat.S_IMODE(config.stat().st_mode) & 0o027 == 0
    assert load_config(config, env={}).syncs
    refused = subprocess.run(
        [forwarder, "init", "--config", config], capture_output=True, text=True, timeout=60
    )
    assert refused.returncode == 2 and "--force" in refused.stderr

    port, admin_port, sim_port = free_port(), free_port(), free_port()
    config.write_text(
        operator_edits(
            config.read_text(),
            {
                "listen": f'"127.0.0.1:{port}"',
                "admin_listen": f'"127.0.0.1:{admin_port}"',
                "path": f'"{tmp_path / "var"}"',
                "base_url": f'"http://127.0.0.1:{sim_port}"',
            },
        )
    )
    assert tomllib.loads(config.read_text())["server"]["listen"] == f"127.0.0.1:{port}"
    run(forwarder, "check-config", "--config", config, cwd=tmp_path)

    sim_log, daemon_log = tmp_path / "sim.log", tmp_path / "daemon.log"
    with open(sim_log, "wb") as sim_out, open(daemon_log, "wb") as daemon_out:
        sim = subprocess.Popen(
            [forwarder, "simulate-iterable", "--port", str(sim_port)],
            cwd=tmp_path,
            env=clean_env(),
            stdout=sim_out,
            stderr=sim_out,
        )
        daemon: subprocess.Popen[bytes] | None = None
        try:
            wait_for(f"http://127.0.0.1:{sim_port}/_sim/stats", sim, sim_log)
            daemon = subprocess.Popen(
                [forwarder, "run", "--config", config],
                cwd=tmp_path,
                env=clean_env(),
                stdout=daemon_out,
                stderr=daemon_out,
            )
            wait_for(f"http://127.0.0.1:{port}/readyz", daemon, daemon_log)
            body = json.dumps(
                {
                    "api_key": "local-dev-key",
                    "events": [
                        {
                            "event_type": "$identify",
                            "user_id": "user-00042",
                            "user_properties": {"$set": {"email": "ada@example.com"}},
                        },
                        {
                            "event_type": "Purchase",
                            "user_id": "user-00042",
                            "insert_id": "evt-1",
                            "event_properties": {"price": 12.5, "sku": "A-1"},
                        },
                    ],
                }
            ).encode()
            status, answer = http_json(f"http://127.0.0.1:{port}/2/httpapi", body)
            assert status == 200, answer
            deadline = time.monotonic() + 30
            stats: dict[str, Any] = {}
            while time.monotonic() < deadline:
                stats = http_json(f"http://127.0.0.1:{sim_port}/_sim/stats")[1]
                if stats["events_received"] >= 1:
                    break
                time.sleep(0.1)
            assert stats["events_received"] == 1, (stats, daemon_log.read_text())

            daemon.send_signal(signal.SIGTERM)
            assert daemon.wait(timeout=30) == 0, daemon_log.read_text()
        finally:
            for process in (daemon, sim):
                if process is not None and process.poll() is None:
                    process.kill()
                    process.wait(timeout=10)

"""Safety rails: no development key sent to the real Iterable, `check-config --online`,
one clear line for a port in use, and enum errors that list the allowed values."""

from __future__ import annotations

import asyncio
import errno
import os
import socket
import sys
from pathlib import Path
from typing import Any

import pytest

from forwarder.cli import main
from forwarder.config import config_warnings, parse_config
from forwarder.errors import ConfigError, ListenError
from forwarder.sim import SimulatorConfig, build_simulator_app
from tests.harness import serve
from tests.processes import ROOT, free_port

SHIPPED = ROOT / "config.toml"


def _raw(**sync: Any) -> dict[str, Any]:
    return {
        "server": {"api_keys": ["amp-key"]},
        "syncs": [{"name": "s", "api_key": "simulator-key", **sync}],
    }


@pytest.mark.parametrize(
    "base_url", [None, "https://api.iterable.com", "https://api.eu.iterable.com/api/"]
)
def test_dev_key_to_real_iterable_is_a_config_error(base_url: str | None) -> None:
    sync = {"base_url": base_url} if base_url else {}
    with pytest.raises(ConfigError) as error:
        parse_config(_raw(**sync), env={})
    assert error.value.path == "syncs[0].api_key"
    assert "development key" in str(error.value) and "iterable.com" in str(error.value)


def test_dev_key_is_fine_against_a_simulator_or_when_disabled() -> None:
    parse_config(_raw(base_url="http://127.0.0.1:9100"), env={})
    parse_config(_raw(base_url="https://iterable.com.example.net"), env={})
    parse_config(_raw(enabled=False), env={})


def _shipped_without_base_url(tmp_path: Path) -> Path:
    text = SHIPPED.read_text()
    assert 'base_url = "http://127.0.0.1:9100"\n' in text
    path = tmp_path / "config.toml"
    path.write_text(text.replace('base_url = "http://127.0.0.1:9100"\n', ""))
    return path


@pytest.fixture
def no_key_env(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("ITERABLE_API_KEY", raising=False)
    monkeypatch.delenv("AMPLITUDE_API_KEY", raising=False)


@pytest.mark.usefixtures("no_key_env")
def test_shipped_config_without_base_url_is_refused_by_check_config_and_run(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    config = str(_shipped_without_base_url(tmp_path))
    for command in ("check-config", "run"):
        with pytest.raises(SystemExit) as exit_:
            main([command, "--config", config])
        assert exit_.value.code == 2
        err = capsys.readouterr().err
        assert "syncs[0].api_key: 'simulator-key' is the shipped development key" in err
    # `make run`'s config (base_url = the simulator) stays valid.
    assert main(["check-config", "--config", str(SHIPPED)]) == 0
    assert "OK" in capsys.readouterr().out


@pytest.mark.usefixtures("no_key_env")
def test_dev_amplitude_key_on_a_public_address_warns(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    path = tmp_path / "config.toml"
    path.write_text(SHIPPED.read_text().replace('listen = "127.0.0.1:8080"', 'listen = ":8080"'))
    assert main(["check-config", "--config", str(path)]) == 0
    err = capsys.readouterr().err
    assert "warning: server.api_keys[0]: 'local-dev-key' is the shipped development key" in err
    loopback = {"server": {"api_keys": ["local-dev-key"], "listen": "[::1]:8080"}}
    assert config_warnings(parse_config(loopback, env={})) == []


@pytest.mark.parametrize(
    ("raw", "message"),
    [
        (_raw(region="US"), 'syncs[0].region: invalid value \'US\': expected one of "us", "eu"'),
        (
            {"server": {"api_keys": ["k"]}, "storage": {"durability": "disk"}},
            'storage.durability: invalid value \'disk\': expected one of "journal", "memory"',
        ),
        (
            _raw(events={"where": [{"field": "user_id", "op": "equals", "value": 1}]}),
            "syncs[0].events.where[0].op: invalid value 'equals': expected one of \"is\", ",
        ),
    ],
)
def test_enum_errors_list_the_allowed_values(raw: dict[str, Any], message: str) -> None:
    with pytest.raises(ConfigError) as error:
        parse_config(raw, env={})
    assert str(error.value).startswith(message)


async def _forwarder(*args: str, timeout: float = 30.0) -> tuple[int, str, str]:
    """`python -m forwarder ARGS`: exit status, stdout, stderr."""
    process = await asyncio.create_subprocess_exec(
        sys.executable,
        "-m",
        "forwarder",
        *args,
        cwd=ROOT,
        env={**os.environ, "PYTHONUNBUFFERED": "1"},
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
    )
    try:
        out, err = await asyncio.wait_for(process.communicate(), timeout)
    except TimeoutError:
        process.kill()
        await process.wait()
        raise
    assert process.returncode is not None
    return process.returncode, out.decode(), err.decode()


def _sync_toml(name: str, key: str, url: str) -> str:
    return f'[[syncs]]\nname = "{name}"\napi_key = "{key}"\nbase_url = "{url}"\n'


def _config(tmp_path: Path, listen: str, admin: str, syncs: str = "") -> Path:
    path = tmp_path / "config.toml"
    path.write_text(
        f'[server]\nlisten = "{listen}"\nadmin_listen = "{admin}"\napi_keys = ["amp-key"]\n'
        f'[storage]\npath = "{tmp_path / "var"}"\ndurability = "memory"\n{syncs}'
    )
    return path


async def test_online_check_reports_each_sync(tmp_path: Path) -> None:
    runner, url = await serve(build_simulator_app(SimulatorConfig(api_keys=frozenset({"good"}))))
    closed = f"http://127.0.0.1:{free_port()}"
    syncs = (
        _sync_toml("right", "good", url)
        + _sync_toml("wrong", "0123456789abcdef0123456789abcdef", url)
        + _sync_toml("gone", "good", closed)
    )
    config = _config(tmp_path, "127.0.0.1:0", "127.0.0.1:0", syncs)
    try:
        code, out, _ = await _forwarder(
            "check-config", "--config", str(config), "--online", "--timeout", "5"
        )
        assert code == 1, out
        assert f"sync right: GET {url}/api/channels: ok: key accepted" in out
        assert "sync wrong: GET" in out and ": 401 invalid API key (BadApiKey" in out
        assert f"sync gone: GET {closed}/api/channels: unreachable: " in out
        assert "0123456789abcdef" not in out  # the key is not echoed

        good_only = _config(tmp_path, "127.0.0.1:0", "127.0.0.1:0", _sync_toml("r", "good", url))
        code, out, _ = await _forwarder("check-config", "--config", str(good_only), "--online")
        assert code == 0, out
    finally:
        await runner.cleanup()


@pytest.mark.parametrize("which", ["listen", "admin_listen"])
async def test_port_in_use_is_one_line_and_exit_1(tmp_path: Path, which: str) -> None:
    with socket.socket() as holder:
        holder.bind(("127.0.0.1", 0))
        holder.listen()
        taken = f"127.0.0.1:{holder.getsockname()[1]}"
        free = f"127.0.0.1:{free_port()}"
        listen, admin = (taken, free) if which == "listen" else (free, taken)
        config = _config(tmp_path, listen, admin)
        code, out, err = await _forwarder("run", "--config", str(config), "--log-format", "json")
    assert code == 1, err
    assert f"forwarder: cannot listen on {taken}: address already in use\n" in err
    assert "Traceback" not in err + out
    # Besides the start lines (JSON), only that line.
    plain = [line for line in err.splitlines() if not line.startswith("{")]
    assert plain == [f"forwarder: cannot listen on {taken}: address already in use"]


def test_listen_error_says_why_in_plain_words() -> None:
    in_use = OSError(
        errno.EADDRINUSE, "error while attempting to bind on address ('127.0.0.1', 80)"
    )
    assert str(ListenError("127.0.0.1:80", in_use)) == (
        "cannot listen on 127.0.0.1:80: address already in use"
    )
    lookup = socket.gaierror(-2, "Name or service not known")
    assert str(ListenError("nohost.invalid:80", lookup)) == (
        "cannot listen on nohost.invalid:80: name or service not known"
    )

"""Config: the shipped file loads; every error names its key path in one line."""

from __future__ import annotations

import copy
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

from forwarder.config import ConfigError, load_config, parse_config

ROOT = Path(__file__).resolve().parent.parent
BASE: dict[str, Any] = {
    "server": {"api_keys": ["amp"]},
    "syncs": [{"name": "one", "api_key": "it"}],
}


def with_change(path: list[Any], value: Any) -> dict[str, Any]:
    raw = copy.deepcopy(BASE)
    node: Any = raw
    for key in path[:-1]:
        if isinstance(node, dict):
            node = node.setdefault(key, {})
        else:
            node = node[key]
    node[path[-1]] = value
    return raw


def test_shipped_config_loads_with_and_without_env() -> None:
    config = load_config(ROOT / "config.toml", env={})
    assert config.server.api_keys == ["local-dev-key"]
    assert config.syncs[0].api_key == "simulator-key"
    real = load_config(
        ROOT / "config.toml", env={"ITERABLE_API_KEY": "it-key", "AMPLITUDE_API_KEY": "amp-key"}
    )
    assert real.syncs[0].api_key == "it-key" and real.server.api_keys == ["amp-key"]


ERRORS: list[tuple[str, list[Any], Any, str]] = [
    ("unknown key", ["syncs", 0, "mappings", "emial"], "x", "syncs[0].mappings.emial"),
    ("unknown section", ["servr"], {}, "servr"),
    ("wrong type", ["server", "max_body_bytes"], "big", "server.max_body_bytes"),
    ("bad enum region", ["syncs", 0, "region"], "mars", "syncs[0].region"),
    ("bad enum durability", ["storage", "durability"], "disk", "storage.durability"),
    (
        "bad property path",
        ["syncs", 0, "mappings", "email"],
        "email.address",
        "syncs[0].mappings.email",
    ),
    (
        "bad field mapping",
        ["syncs", 0, "mappings", "fields"],
        {"nope.x": "y"},
        "syncs[0].mappings.fields.nope.x",
    ),
    (
        "filter op",
        ["syncs", 0, "events", "where"],
        [{"field": "event_properties.a", "op": "like", "value": 1}],
        "syncs[0].events.where[0].op",
    ),
    (
        "filter value missing",
        ["syncs", 0, "events", "where"],
        [{"field": "event_properties.a", "op": "is"}],
        "syncs[0].events.where[0].value",
    ),
    (
        "filter value not a number",
        ["syncs", 0, "events", "where"],
        [{"field": "event_properties.a", "op": "greater than", "value": "ten"}],
        "syncs[0].events.where[0].value",
    ),
    (
        "filter field",
        ["syncs", 0, "events", "where"],
        [{"field": "", "op": "is set"}],
        "syncs[0].events.where[0].field",
    ),
    (
        "non-positive limit",
        ["syncs", 0, "limits", "track_bulk_per_second"],
        0,
        "syncs[0].limits.track_bulk_per_second",
    ),
    (
        "tiny byte cap",
        ["syncs", 0, "limits", "max_request_bytes"],
        10,
        "syncs[0].limits.max_request_bytes",
    ),
    ("bad listen", ["server", "listen"], "localhost", "server.listen"),
    ("bad admin_listen", ["server", "admin_listen"], "localhost", "server.admin_listen"),
    ("admin_listen turned off", ["server", "admin_listen"], "", "server.admin_listen"),
    ("admin_listen past 65535", ["server", "admin_listen"], ":70000", "server.admin_listen"),
    ("admin on ingest's port", ["server", "admin_listen"], "127.0.0.1:8080", "server.admin_listen"),
    ("no api keys", ["server", "api_keys"], [], "server.api_keys"),
    ("empty api key", ["server", "api_keys"], [""], "server.api_keys[0]"),
    ("bad base_url", ["syncs", 0, "base_url"], "ftp://x", "syncs[0].base_url"),
    ("bad sync name", ["syncs", 0, "name"], "has space", "syncs[0].name"),
    ("negative linger", ["syncs", 0, "delivery", "linger_ms"], -1, "syncs[0].delivery.linger_ms"),
]


@pytest.mark.parametrize(
    ("path", "value", "key_path"), [e[1:] for e in ERRORS], ids=[e[0] for e in ERRORS]
)
def test_errors_name_their_key_path(path: list[Any], value: Any, key_path: str) -> None:
    with pytest.raises(ConfigError) as error:
        parse_config(with_change(path, value), env={})
    assert error.value.path == key_path
    assert str(error.value).startswith(key_path + ": ")
    assert "\n" not in str(error.value)


def test_missing_required_key() -> None:
    raw = copy.deepcopy(BASE)
    del raw["syncs"][0]["api_key"]
    with pytest.raises(ConfigError) as error:
        parse_config(raw, env={})
    assert error.value.path == "syncs[0].api_key"


def test_duplicate_sync_names() -> None:
    raw = copy.deepcopy(BASE)
    raw["syncs"].append({"name": "one", "api_key": "other"})
    with pytest.raises(ConfigError) as error:
        parse_config(raw, env={})
    assert error.value.path == "syncs[1].name" and "duplicate" in str(error.value)


def test_unset_environment_variable_names_the_key_using_it() -> None:
    raw = with_change(["syncs", 0, "api_key"], "${ITERABLE_KEY_THAT_IS_NOT_SET}")
    with pytest.raises(ConfigError) as error:
        parse_config(raw, env={})
    assert error.value.path == "syncs[0].api_key"
    assert "ITERABLE_KEY_THAT_IS_NOT_SET" in str(error.value)
    assert parse_config(raw, env={"ITERABLE_KEY_THAT_IS_NOT_SET": "k"}).syncs[0].api_key == "k"


def test_invalid_toml_and_missing_file(tmp_path: Path) -> None:
    broken = tmp_path / "broken.toml"
    broken.write_text("[server\nlisten = 1")
    with pytest.raises(ConfigError, match="not valid TOML"):
        load_config(broken)
    with pytest.raises(ConfigError, match="cannot read"):
        load_config(tmp_path / "absent.toml")


def run_cli(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "forwarder", *args],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=60,
    )


def test_cli_version_and_help() -> None:
    version = run_cli("--version")
    assert version.returncode == 0 and version.stdout.startswith("forwarder ")
    for command in ("run", "check-config", "dead-letters", "simulate-iterable"):
        helped = run_cli(command, "--help")
        assert helped.returncode == 0 and "usage:" in helped.stdout


def test_cli_check_config(tmp_path: Path) -> None:
    good = run_cli("check-config", "--config", str(ROOT / "config.toml"))
    assert good.returncode == 0 and "sync iterable-local: enabled" in good.stdout
    bad = tmp_path / "bad.toml"
    bad.write_text(
        '[server]\napi_keys = ["a"]\n[[syncs]]\nname = "x"\napi_key = "k"\nregion = "mars"\n'
    )
    broken = run_cli("check-config", "--config", str(bad))
    assert broken.returncode == 2
    (line,) = broken.stderr.strip().splitlines()
    assert "syncs[0].region" in line


def test_cli_dead_letters_counts(tmp_path: Path) -> None:
    config = tmp_path / "c.toml"
    config.write_text(
        f'[server]\napi_keys = ["a"]\n[storage]\npath = "{tmp_path}"\n[[syncs]]\nname = "x"\napi_key = "k"\n'
    )
    letters = tmp_path / "dead-letters" / "x.jsonl"
    letters.parent.mkdir()
    letters.write_text(
        '{"time":1,"sync":"x","endpoint":"events/trackBulk","reason":"invalidEmails","attempts":1,"item":{}}\n'
        * 3
    )
    listed = run_cli("dead-letters", "--config", str(config))
    assert (
        listed.returncode == 0
        and "x: 3 dead letter(s)" in listed.stdout
        and "invalidEmails" in listed.stdout
    )


def test_a_misspelt_top_level_field_is_an_error_not_a_silent_blank() -> None:
    with pytest.raises(ConfigError) as error:
        parse_config(with_change(["syncs", 0, "mappings", "user_id"], "user_Id"), env={})
    assert error.value.path == "syncs[0].mappings.user_id" and "user_properties.NAME" in str(
        error.value
    )
    assert parse_config(with_change(["syncs", 0, "mappings", "user_id"], "device_id"), env={})

"""`forwarder init`: the packaged sample config, written whole, never over a file unasked."""

from __future__ import annotations

import os
import stat
from pathlib import Path

import pytest

from forwarder.cli import main
from forwarder.config import load_config
from forwarder.sample import sample_config

ROOT = Path(__file__).resolve().parent.parent


def test_the_packaged_sample_is_the_repository_config() -> None:
    # One text: forwarder/config.toml (package data) links to the config `make run` uses.
    assert sample_config() == (ROOT / "config.toml").read_bytes()


def test_init_writes_the_sample_and_refuses_to_overwrite_without_force(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    path = tmp_path / "etc" / "forwarder" / "config.toml"
    old_umask = os.umask(0o022)
    try:
        assert main(["init", "--config", str(path)]) == 0
    finally:
        os.umask(old_umask)
    assert path.read_bytes() == sample_config()
    assert stat.S_IMODE(path.stat().st_mode) == 0o640
    assert load_config(path, env={}).syncs[0].name == "iterable-local"
    assert list(path.parent.iterdir()) == [path]  # no temporary file left behind

    path.write_text("# edited by the operator\n")
    assert main(["init", "--config", str(path)]) == 2
    assert "exists (--force overwrites it)" in capsys.readouterr().err
    assert path.read_text() == "# edited by the operator\n"

    assert main(["init", "--config", str(path), "--force"]) == 0
    assert path.read_bytes() == sample_config()
    assert list(path.parent.iterdir()) == [path]

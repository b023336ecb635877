"""Wiring from config: durability picks the storage roles."""

from __future__ import annotations

from pathlib import Path

from forwarder.config import parse_config
from forwarder.daemon import open_pipeline
from forwarder.store.journal import Journal
from forwarder.store.log import NoLog
from forwarder.store.profiles import MemoryProfileStore
from forwarder.store.sqlite_profiles import SqliteProfileStore


def _config(tmp_path: Path, durability: str) -> dict[str, object]:
    return {
        "server": {"api_keys": ["k"]},
        "storage": {"path": str(tmp_path), "durability": durability},
        "syncs": [
            {"name": "on", "api_key": "a", "base_url": "http://127.0.0.1:9"},
            {"name": "off", "api_key": "b", "enabled": False},
        ],
    }


async def test_memory_durability_wires_no_log_and_memory_profiles(tmp_path: Path) -> None:
    pipeline = await open_pipeline(parse_config(_config(tmp_path, "memory")))
    assert isinstance(pipeline.log, NoLog)
    assert isinstance(pipeline.intake.profiles, MemoryProfileStore)
    assert [d.name for d in pipeline.deliveries] == ["on"]
    await pipeline.stop()


async def test_journal_durability_wires_the_journal_and_sqlite(tmp_path: Path) -> None:
    pipeline = await open_pipeline(parse_config(_config(tmp_path, "journal")))
    assert isinstance(pipeline.log, Journal)
    assert isinstance(pipeline.intake.profiles, SqliteProfileStore)
    await pipeline.recover()
    assert pipeline.snapshot().disabled_syncs == ["off"]
    await pipeline.stop()
    assert (tmp_path / "profiles.sqlite3").exists()
    assert (tmp_path / "journal").is_dir()

"""The SQLite profile store: reopen, LRU and dirty entries, synchronous reads."""

from __future__ import annotations

from pathlib import Path

from forwarder.store.sqlite_profiles import SqliteProfileStore


def open_store(path: Path, cache_size: int = 10, flush_interval: float = 0.2) -> SqliteProfileStore:
    return SqliteProfileStore(path, cache_size=cache_size, flush_interval=flush_interval)


async def test_sqlite_store_survives_reopen(tmp_path: Path) -> None:
    store = await open_store(tmp_path).open()
    await store.load(["a", "b"])
    assert store.is_new("a")
    store.get("a").update({"email": "a@x.io", "n": 1})
    store.mark_changed("a")
    assert not store.is_new("a")
    await store.close()

    again = await open_store(tmp_path).open()
    await again.load(["a", "b"])
    assert not again.is_new("a") and again.get("a") == {"email": "a@x.io", "n": 1}
    assert again.is_new("b") and again.get("b") == {}
    await again.close()


async def test_sqlite_lru_keeps_dirty_entries_until_written(tmp_path: Path) -> None:
    store = await open_store(tmp_path, cache_size=5, flush_interval=3600).open()
    for n in range(20):
        store.get(f"u{n}")["n"] = n
        store.mark_changed(f"u{n}")
    # None is written yet, so none may be evicted.
    assert all(store.get(f"u{n}") == {"n": n} for n in range(20))
    await store.flush()
    await store.load([f"v{n}" for n in range(10)])  # push the written ones out
    assert store.get("u3") == {"n": 3}  # read back from SQLite
    await store.close()


async def test_sqlite_get_without_load_reads_synchronously(tmp_path: Path) -> None:
    store = await open_store(tmp_path).open()
    store.get("x")["plan"] = "pro"
    store.mark_changed("x")
    await store.close()
    again = await open_store(tmp_path).open()
    assert again.get("x") == {"plan": "pro"}
    assert not again.is_new("x")
    await again.close()

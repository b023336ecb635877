"""The SQLite profile store: reopen, LRU and dirty entries, synchronous reads."""

from __future__ import annotations

import asyncio
from pathlib import Path

from forwarder.store.sqlite_profiles import SqliteProfileStore


def open_store(path: Path, cache_size: int = 10, flush_interval: float = 0.2) -> SqliteProfileStore:
    return SqliteProfileStore(path, cache_size=cache_size, flush_interval=flush_interval)


async def test_sqlite_store_survives_reopen(tmp_path: Path) -> None:
    store = await open_store(tmp_path).open()
    await store.load(["a", "b"])
    assert store.is_new("a")
    store.put("a", {"email": "a@x.io", "n": 1})
    assert not store.is_new("a")
    await store.close()

    again = await open_store(tmp_path).open()
    await again.load(["a", "b"])
    assert not again.is_new("a") and again.get("a") == {"email": "a@x.io", "n": 1}
    assert again.is_new("b") and again.get("b") == {}
    await again.close()


async def test_sqlite_lru_keeps_unwritten_profiles_until_written(tmp_path: Path) -> None:
    store = await open_store(tmp_path, cache_size=5, flush_interval=3600).open()
    for n in range(20):
        store.put(f"u{n}", {"n": n})
    await store.load([f"v{n}" for n in range(10)])  # would push them out if they could go
    # None is written yet, so none may be evicted.
    assert all(store.get(f"u{n}") == {"n": n} for n in range(20))
    await store.flush()
    await store.load([f"w{n}" for n in range(10)])  # push the written ones out
    assert store.get("u3") == {"n": 3}  # read back from SQLite
    await store.close()


async def test_sqlite_cache_stays_at_its_size_past_it(tmp_path: Path) -> None:
    store = await open_store(tmp_path, cache_size=100, flush_interval=3600).open()
    for start in range(0, 5000, 50):
        users = [f"u{n}" for n in range(start, start + 50)]
        await store.load(users)
        for user in users:
            store.put(user, {"id": user})
        await store.flush()
        assert len(store._cache) <= 100 and not store._unwritten
    assert store.get("u4999") == {"id": "u4999"} and store.get("u7") == {"id": "u7"}
    await store.close()


async def test_a_put_during_a_flush_stays_unwritten_until_the_next(tmp_path: Path) -> None:
    store = await open_store(tmp_path, flush_interval=3600).open()
    store.put("a", {"v": 1})
    flushing = asyncio.ensure_future(store.flush())
    await asyncio.sleep(0)  # the write runs on the store's thread
    store.put("a", {"v": 2})
    await flushing
    assert store.get("a") == {"v": 2} and "a" in store._unwritten
    await store.close()
    again = await open_store(tmp_path).open()
    assert again.get("a") == {"v": 2}
    await again.close()


async def test_sqlite_get_without_load_reads_synchronously(tmp_path: Path) -> None:
    store = await open_store(tmp_path).open()
    store.put("x", {"plan": "pro"})
    await store.close()
    again = await open_store(tmp_path).open()
    assert again.get("x") == {"plan": "pro"}
    assert not again.is_new("x")
    await again.close()

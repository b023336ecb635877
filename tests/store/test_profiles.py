"""The in-memory profile store."""

from __future__ import annotations

from forwarder.store.profiles import MemoryProfileStore


async def test_memory_store_is_new_until_touched() -> None:
    store = MemoryProfileStore()
    assert store.is_new("u")
    store.get("u")["a"] = 1
    store.mark_changed("u")
    assert not store.is_new("u")
    assert store.get("u") == {"a": 1}

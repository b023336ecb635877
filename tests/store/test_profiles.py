"""The in-memory profile store: new until put, bounded by least recent use."""

from __future__ import annotations

from forwarder.store.profiles import MemoryProfileStore


async def test_memory_store_is_new_until_put() -> None:
    store = MemoryProfileStore(capacity=10)
    assert store.is_new("u") and store.get("u") == {}
    store.put("u", {"a": 1})
    assert not store.is_new("u")
    assert store.get("u") == {"a": 1}


async def test_memory_store_forgets_the_least_recently_used_past_its_capacity() -> None:
    store = MemoryProfileStore(capacity=3)
    for user in ("a", "b", "c"):
        store.put(user, {"name": user})
    store.get("a")  # a is now the most recently used
    store.put("d", {"name": "d"})
    assert store.is_new("b") and store.evicted == 1
    assert [not store.is_new(u) for u in ("a", "c", "d")] == [True, True, True]


async def test_memory_store_stays_bounded_over_many_users() -> None:
    store = MemoryProfileStore(capacity=1000)
    for n in range(20_000):
        store.put(f"u{n}", {"n": n})
    assert sum(not store.is_new(f"u{n}") for n in range(20_000)) == 1000
    assert store.evicted == 19_000

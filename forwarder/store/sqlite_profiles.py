"""Profiles in SQLite (WAL) behind an LRU cache, written in batches on one thread."""

from __future__ import annotations

import asyncio
import sqlite3
from collections import OrderedDict
from collections.abc import Collection
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import msgspec

_encode = msgspec.msgpack.Encoder().encode
_decode = msgspec.msgpack.Decoder(dict[str, Any]).decode
_LOAD_CHUNK = 500


class SqliteProfileStore:
    """Profiles in SQLite (WAL) with an LRU cache in front and batched writes.

    Every SQLite call runs on one dedicated thread that owns the connection, so the
    event loop never waits on the disk except through load() and flush().
    """

    def __init__(self, path: Path, cache_size: int, flush_interval: float) -> None:
        self.path = path
        self.cache_size = cache_size
        self.flush_interval = flush_interval
        self._cache: OrderedDict[str, dict[str, Any]] = OrderedDict()
        self._new: set[str] = set()  # cached users the database does not know, never changed
        self._dirty: set[str] = set()
        self._executor = ThreadPoolExecutor(max_workers=1, thread_name_prefix="profiles")
        self._db: sqlite3.Connection | None = None
        self._flusher: asyncio.Task[None] | None = None
        self._flush_lock = asyncio.Lock()

    async def open(self) -> SqliteProfileStore:
        await self._run(self._open_sync)
        self._flusher = asyncio.create_task(self._flush_loop(), name="profile-flush")
        return self

    def _open_sync(self) -> None:
        self.path.mkdir(parents=True, exist_ok=True)
        db = sqlite3.connect(self.path / "profiles.sqlite3", check_same_thread=False)
        db.execute("PRAGMA journal_mode=WAL")
        # FULL: a commit is on disk before the journal checkpoint moves past it (power loss
        # included). Commits are batched every flush_interval, so this costs one fsync each.
        db.execute("PRAGMA synchronous=FULL")
        db.execute(
            "CREATE TABLE IF NOT EXISTS profiles (user TEXT PRIMARY KEY, properties BLOB NOT NULL)"
        )
        db.commit()
        self._db = db

    async def _run(self, fn: Any, *args: Any) -> Any:
        return await asyncio.get_running_loop().run_in_executor(self._executor, fn, *args)

    # --- reads ---------------------------------------------------------------------

    async def load(self, users: Collection[str]) -> None:
        missing = [u for u in users if u not in self._cache]
        if not missing:
            for user in users:
                self._cache.move_to_end(user)
            return
        found = await self._run(self._read_sync, missing)
        for user in missing:
            if user in self._cache:  # filled by a concurrent get() meanwhile
                continue
            if user in found:
                self._cache[user] = found[user]
            else:
                # Remembered as new, so is_new() needs no second look at the disk.
                self._cache[user] = {}
                self._new.add(user)
        self._evict(keep=set(users))

    def _read_sync(self, users: list[str]) -> dict[str, dict[str, Any]]:
        assert self._db is not None
        found: dict[str, dict[str, Any]] = {}
        for start in range(0, len(users), _LOAD_CHUNK):
            chunk = users[start : start + _LOAD_CHUNK]
            marks = ",".join("?" * len(chunk))
            for user, blob in self._db.execute(
                f"SELECT user, properties FROM profiles WHERE user IN ({marks})", chunk
            ):
                found[user] = _decode(blob)
        return found

    def get(self, user: str) -> dict[str, Any]:
        profile = self._cache.get(user)
        if profile is not None:
            self._cache.move_to_end(user)
            return profile
        # Not loaded: read synchronously (load() exists so the hot path never does this).
        found = self._executor.submit(self._read_sync, [user]).result()
        if user in found:
            profile = found[user]
        else:
            profile = {}
            self._new.add(user)
        self._cache[user] = profile
        self._evict(keep=(user,))
        return profile

    def is_new(self, user: str) -> bool:
        if user in self._cache:
            return user in self._new
        return not self._executor.submit(self._read_sync, [user]).result()

    # --- writes --------------------------------------------------------------------

    def mark_changed(self, user: str) -> None:
        if user not in self._cache:
            self.get(user)
        self._new.discard(user)
        self._dirty.add(user)

    def _evict(self, keep: Collection[str] = ()) -> None:
        """Drop least recently used clean entries past cache_size.

        Dirty entries stay until written, and so do `keep` (the users a caller is about to
        use: evicting the dict just handed out would lose the caller's changes).
        """
        excess = len(self._cache) - self.cache_size
        if excess <= 0:
            return
        for user in list(self._cache):
            if excess <= 0:
                break
            if user in self._dirty or user in keep:
                continue
            del self._cache[user]
            self._new.discard(user)
            excess -= 1

    async def flush(self) -> None:
        async with self._flush_lock:
            if not self._dirty:
                return
            dirty, self._dirty = self._dirty, set()
            # Encode on the loop: the dicts are live and the loop is their only writer.
            rows = [(user, _encode(self._cache[user])) for user in dirty if user in self._cache]
            try:
                await self._run(self._write_sync, rows)
            except BaseException:
                self._dirty |= dirty
                raise
            self._evict()

    def _write_sync(self, rows: list[tuple[str, bytes]]) -> None:
        assert self._db is not None
        with self._db:
            self._db.executemany(
                "INSERT INTO profiles (user, properties) VALUES (?, ?) "
                "ON CONFLICT(user) DO UPDATE SET properties = excluded.properties",
                rows,
            )

    async def _flush_loop(self) -> None:
        while True:
            await asyncio.sleep(self.flush_interval)
            await self.flush()

    async def close(self) -> None:
        if self._flusher is not None:
            self._flusher.cancel()
            await asyncio.gather(self._flusher, return_exceptions=True)
            self._flusher = None
        await self.flush()
        if self._db is not None:
            await self._run(self._db.close)
            self._db = None
        self._executor.shutdown(wait=True)

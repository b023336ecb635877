"""Profiles in SQLite (WAL) behind an LRU cache, written in batches on one thread."""

from __future__ import annotations

import asyncio
import logging
import sqlite3
from collections import OrderedDict
from collections.abc import Collection
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import msgspec

from forwarder.errors import StorageUnavailable
from forwarder.store.profiles import Profile

log = logging.getLogger("forwarder.profiles")
_encode = msgspec.msgpack.Encoder().encode
_decode = msgspec.msgpack.Decoder(dict[str, Any]).decode
_LOAD_CHUNK = 500


class SqliteProfileStore:
    """Profiles in SQLite (WAL) with an LRU cache in front and batched writes.

    Profiles put since the last flush wait in `_unwritten` (never evicted); the LRU cache
    holds only written ones, so evicting is popping its oldest entry: O(1) per user.
    Every SQLite call runs on one dedicated thread that owns the connection, so the event
    loop never waits on the disk except through load() and flush().
    """

    def __init__(self, path: Path, cache_size: int, flush_interval: float) -> None:
        self.path = path
        self.cache_size = cache_size
        self.flush_interval = flush_interval
        self._cache: OrderedDict[str, Profile] = OrderedDict()
        self._unwritten: dict[str, Profile] = {}
        self._new: set[str] = set()  # cached users the database does not know
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
        try:
            return await asyncio.get_running_loop().run_in_executor(self._executor, fn, *args)
        except (OSError, sqlite3.Error) as error:
            # A full, read-only or failing disk: the caller answers 503, never 500.
            raise StorageUnavailable(f"profile store: {error}") from error

    # --- reads ---------------------------------------------------------------------

    async def load(self, users: Collection[str]) -> None:
        cache, unwritten = self._cache, self._unwritten
        missing = []
        for user in users:
            if user in cache:
                cache.move_to_end(user)
            elif user not in unwritten:
                missing.append(user)
        if not missing:
            return
        found = await self._run(self._read_sync, missing)
        for user in missing:
            if user in cache or user in unwritten:  # filled meanwhile
                continue
            profile = found.get(user)
            if profile is None:
                # Remembered as new, so is_new() needs no second look at the disk.
                profile = {}
                self._new.add(user)
            cache[user] = profile
        self._evict(keep=users)

    def _read_sync(self, users: list[str]) -> dict[str, Profile]:
        assert self._db is not None
        found: dict[str, Profile] = {}
        for start in range(0, len(users), _LOAD_CHUNK):
            chunk = users[start : start + _LOAD_CHUNK]
            marks = ",".join("?" * len(chunk))
            for user, blob in self._db.execute(
                f"SELECT user, properties FROM profiles WHERE user IN ({marks})", chunk
            ):
                found[user] = _decode(blob)
        return found

    def get(self, user: str) -> Profile:
        profile = self._unwritten.get(user)
        if profile is not None:
            return profile
        profile = self._cache.get(user)
        if profile is not None:
            self._cache.move_to_end(user)
            return profile
        # Not loaded: read synchronously (load() exists so the hot path never does this).
        found = self._executor.submit(self._read_sync, [user]).result()
        profile = found.get(user)
        if profile is None:
            profile = {}
            self._new.add(user)
        self._cache[user] = profile
        self._evict(keep=(user,))
        return profile

    def is_new(self, user: str) -> bool:
        if user in self._unwritten:
            return False
        if user in self._cache:
            return user in self._new
        return not self._executor.submit(self._read_sync, [user]).result()

    # --- writes --------------------------------------------------------------------

    def put(self, user: str, profile: Profile) -> None:
        self._unwritten[user] = profile
        self._new.discard(user)
        # The unwritten profile is the one to read until it is flushed.
        self._cache.pop(user, None)

    def _evict(self, keep: Collection[str] = ()) -> None:
        """Drop the least recently used written profiles past cache_size.

        `keep` (the users a caller is about to use) stay even past the size: they are the
        most recently used, so meeting one at the old end means the cache is all of them.
        """
        cache = self._cache
        while len(cache) > self.cache_size:
            oldest = next(iter(cache))
            if oldest in keep:
                return
            del cache[oldest]
            self._new.discard(oldest)

    async def flush(self) -> None:
        """Write every profile put since the last flush; on failure they stay unwritten."""
        async with self._flush_lock:
            if not self._unwritten:
                return
            batch = dict(self._unwritten)
            rows = [(user, _encode(profile)) for user, profile in batch.items()]
            await self._run(self._write_sync, rows)
            for user, profile in batch.items():
                # A newer put during the write stays unwritten; this one is on disk now.
                if self._unwritten.get(user) is profile:
                    del self._unwritten[user]
                    self._cache[user] = profile
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
            try:
                await self.flush()
            except StorageUnavailable:
                # The checkpoint's own flush reports it and holds the journal back; the
                # profiles stay unwritten and go with the next flush that works.
                log.warning("profile flush failed; retrying", exc_info=True)

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

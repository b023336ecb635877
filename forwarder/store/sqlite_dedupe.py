"""The seen-inserts kept in memory and in SQLite (WAL), so a restart still knows them."""

from __future__ import annotations

import asyncio
import sqlite3
import time
from collections.abc import Iterable
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

from forwarder.errors import StorageUnavailable
from forwarder.store.dedupe import MemorySeenInserts


class SqliteSeenInserts(MemorySeenInserts):
    """The memory store, with every key added also written to SQLite at the next flush.

    The table holds what memory holds: a flush deletes the rows of the keys memory dropped
    (expired or evicted), and open() loads the newest `capacity` rows in the window.
    Keys added since the last flush are also in the journal records not yet checkpointed,
    which the pipeline flushes this store before saving: a crash loses none.
    """

    def __init__(self, path: Path, capacity: int, window_seconds: int) -> None:
        super().__init__(capacity, window_seconds)
        self.path = path
        self._unwritten: list[tuple[bytes, int]] = []
        self._gone: list[bytes] = []  # keys memory dropped since the last flush
        self._executor = ThreadPoolExecutor(max_workers=1, thread_name_prefix="seen-inserts")
        self._db: sqlite3.Connection | None = None
        self._flush_lock = asyncio.Lock()

    async def open(self, now: int | None = None) -> SqliteSeenInserts:
        now = int(time.time()) if now is None else now
        self.load(await self._run(self._open_sync, now), now)
        return self

    def _open_sync(self, now: int) -> list[tuple[bytes, int]]:
        self.path.mkdir(parents=True, exist_ok=True)
        db = sqlite3.connect(self.path / "inserts.sqlite3", check_same_thread=False)
        db.execute("PRAGMA journal_mode=WAL")
        # FULL: a flush is on disk before the journal checkpoint moves past its records.
        db.execute("PRAGMA synchronous=FULL")
        db.execute("CREATE TABLE IF NOT EXISTS seen (key BLOB PRIMARY KEY, at INTEGER NOT NULL)")
        db.execute("CREATE INDEX IF NOT EXISTS seen_at ON seen (at)")
        db.commit()
        self._db = db
        rows = db.execute(
            "SELECT key, at FROM seen WHERE at > ? ORDER BY at DESC LIMIT ?",
            (now - self.window, self.capacity),
        ).fetchall()
        rows.reverse()
        return rows

    async def _run(self, fn: Any, *args: Any) -> Any:
        try:
            return await asyncio.get_running_loop().run_in_executor(self._executor, fn, *args)
        except (OSError, sqlite3.Error) as error:
            raise StorageUnavailable(f"seen-inserts store: {error}") from error

    def add(self, keys: Iterable[bytes], at: int) -> None:
        keys = list(keys)
        self._unwritten.extend((key, at) for key in keys)
        super().add(keys, at)

    def _dropped(self, key: bytes) -> None:
        self._gone.append(key)

    async def flush(self) -> None:
        """Write the keys added since the last flush and drop the rows memory dropped."""
        async with self._flush_lock:
            batch, self._unwritten = self._unwritten, []
            # A key dropped and then added again (its window over) stays on disk.
            gone, self._gone = [key for key in self._gone if key not in self._at], []
            try:
                await self._run(self._write_sync, batch, gone)
            except StorageUnavailable:
                # The next flush tries them again.
                self._unwritten = batch + self._unwritten
                self._gone = gone + self._gone
                raise

    def _write_sync(self, rows: list[tuple[bytes, int]], gone: list[bytes]) -> None:
        assert self._db is not None
        with self._db:
            self._db.executemany(
                "INSERT INTO seen (key, at) VALUES (?, ?) "
                "ON CONFLICT(key) DO UPDATE SET at = excluded.at",
                rows,
            )
            self._db.executemany("DELETE FROM seen WHERE key = ?", [(key,) for key in gone])

    async def count_rows(self) -> int:
        """The rows on disk (for tests and operators: it stays at most `capacity`)."""
        assert self._db is not None
        db = self._db
        return int(await self._run(lambda: db.execute("SELECT COUNT(*) FROM seen").fetchone()[0]))

    async def close(self) -> None:
        try:
            await self.flush()
        finally:
            if self._db is not None:
                db, self._db = self._db, None
                await self._run(db.close)
            self._executor.shutdown(wait=True)

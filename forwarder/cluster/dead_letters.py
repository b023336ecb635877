"""Dead letters in Redis: a stream per sync that every node writes and the CLI reads.

Each entry holds one letter's JSON line (the file format's, so a letter's id is the same
short hash of it). A counter beside the stream holds the bytes of its lines: a script
adds letters only while they fit under `storage.dead_letter_max_bytes` (the first into
an empty stream whatever its size, as the file does), and purging subtracts what it
removes, both atomically, so every node sees one cap per sync.
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass
from typing import Any

from redis.asyncio import Redis
from redis.exceptions import RedisError

from forwarder.cluster.errors import ClusterUnavailable
from forwarder.config import Config
from forwarder.store.dead_letters import (
    DeadLetter,
    DeadLetterCapReached,
    decode_line,
    encode_letter,
)

DEFAULT_PREFIX = "forwarder:dead"
# Entries read per XRANGE.
PAGE = 1000

# KEYS: the stream, its byte counter. ARGV: the cap (-1: none), then the lines.
# Adds the lines that fit; returns {how many, bytes held}.
ADD_FITTING = """
local size = tonumber(redis.call('GET', KEYS[2]) or '0')
local cap = tonumber(ARGV[1])
local added = 0
for i = 2, #ARGV do
  local length = #ARGV[i]
  if cap >= 0 and size + length > cap and not (size == 0 and added == 0) then break end
  redis.call('XADD', KEYS[1], '*', 'line', ARGV[i])
  size = size + length
  added = added + 1
end
if added > 0 then redis.call('SET', KEYS[2], size) end
return {added, size}
"""

# KEYS: the stream, its byte counter. ARGV: pairs of entry id and its line's length.
# Deletes the entries still there; returns {bytes held, the ids it deleted...}.
DELETE = """
local size = tonumber(redis.call('GET', KEYS[2]) or '0')
local result = {0}
for i = 1, #ARGV, 2 do
  if redis.call('XDEL', KEYS[1], ARGV[i]) == 1 then
    size = size - tonumber(ARGV[i + 1])
    result[#result + 1] = ARGV[i]
  end
end
if redis.call('XLEN', KEYS[1]) == 0 or size < 0 then size = 0 end
redis.call('SET', KEYS[2], size)
result[1] = size
return result
"""

# KEYS: the stream, its byte counter, a replay's aside stream. ARGV: entry ids.
# Moves the entries still there (another replay or purge may have taken some) to the
# aside stream in one step, so a letter is always in exactly one of the two; returns
# {bytes held, the ids it moved...}.
MOVE_ASIDE = """
local size = tonumber(redis.call('GET', KEYS[2]) or '0')
local result = {0}
for i = 1, #ARGV do
  local found = redis.call('XRANGE', KEYS[1], ARGV[i], ARGV[i])
  if #found == 1 then
    local fields = found[1][2]
    for j = 1, #fields, 2 do
      if fields[j] == 'line' then
        redis.call('XADD', KEYS[3], '*', 'line', fields[j + 1])
        redis.call('XDEL', KEYS[1], ARGV[i])
        size = size - #fields[j + 1]
        result[#result + 1] = ARGV[i]
        break
      end
    end
  end
end
if redis.call('XLEN', KEYS[1]) == 0 or size < 0 then size = 0 end
redis.call('SET', KEYS[2], size)
result[1] = size
return result
"""

# KEYS: an aside stream, the stream, its byte counter, the aside's heartbeat.
# ARGV: at most this many entries, then '1' to act only once the heartbeat is gone.
# Moves the aside's oldest entries back (not held to the cap: they were stored before);
# an emptied aside goes with its heartbeat. Returns how many (-1: its owner is alive).
PUT_BACK = """
if ARGV[2] == '1' and redis.call('EXISTS', KEYS[4]) == 1 then return -1 end
local entries = redis.call('XRANGE', KEYS[1], '-', '+', 'COUNT', tonumber(ARGV[1]))
local size = tonumber(redis.call('GET', KEYS[3]) or '0')
for _, entry in ipairs(entries) do
  local fields = entry[2]
  for j = 1, #fields, 2 do
    if fields[j] == 'line' then
      redis.call('XADD', KEYS[2], '*', 'line', fields[j + 1])
      size = size + #fields[j + 1]
    end
  end
  redis.call('XDEL', KEYS[1], entry[1])
end
if #entries > 0 then redis.call('SET', KEYS[3], size) end
if redis.call('XLEN', KEYS[1]) == 0 then redis.call('DEL', KEYS[1], KEYS[4]) end
return #entries
"""


class DeadLetterStoreUnavailable(ClusterUnavailable):
    """Redis did not take or give dead letters: a write is retried every second."""


@dataclass(frozen=True)
class StoredLetter:
    """A letter as the stream holds it: its entry id, its line, and the letter (or the
    error text when the line does not decode)."""

    entry: str
    line: bytes
    letter: DeadLetter | str


def stream_key(prefix: str, sync: str) -> str:
    return f"{prefix}:{sync}"


class RedisDeadLetters:
    """One sync's dead letters in Redis: the DeadLetterSink of a node in cluster mode,
    and what `forwarder dead-letters` reads there."""

    def __init__(
        self, redis: Redis, sync: str, max_bytes: int | None, prefix: str = DEFAULT_PREFIX
    ) -> None:
        self.redis = redis
        self.sync = sync
        self.max_bytes = max_bytes
        self.at_cap = False
        self.key = stream_key(prefix, sync)
        self.bytes_key = f"{self.key}:bytes"
        # The bytes held as this node last saw them (others write too).
        self._size = 0
        self._add_fitting = redis.register_script(ADD_FITTING)
        self._delete = redis.register_script(DELETE)
        self._move_aside = redis.register_script(MOVE_ASIDE)
        self._put_back = redis.register_script(PUT_BACK)

    @property
    def where(self) -> str:
        return f"redis {self.key}"

    def size(self) -> int:
        return self._size

    async def refresh(self) -> int:
        """Read the bytes held now (at start, and for a fresh /status)."""
        try:
            self._size = int(await self.redis.get(self.bytes_key) or 0)
        except (RedisError, OSError) as error:
            raise _unavailable(error) from error
        return self._size

    async def write(self, letters: list[DeadLetter]) -> int:
        if not letters:
            return 0
        lines = [encode_letter(letter).rstrip(b"\n") for letter in letters]
        cap = -1 if self.max_bytes is None else self.max_bytes
        try:
            added, size = await self._add_fitting(
                keys=[self.key, self.bytes_key], args=[cap, *lines]
            )
        except (RedisError, OSError) as error:
            raise _unavailable(error) from error
        self._size = int(size)
        self.at_cap = int(added) < len(lines)
        if not added:
            raise DeadLetterCapReached(self.where, self._size, cap)
        return int(added)

    async def read(self) -> AsyncIterator[StoredLetter]:
        """Every entry, oldest first, a page at a time."""
        async for stored in read_stream(self.redis, self.key):
            yield stored

    async def delete(self, entries: list[StoredLetter]) -> list[StoredLetter]:
        """Remove these entries; the ones removed (not those another purge took first)."""
        deleted: list[StoredLetter] = []
        for start in range(0, len(entries), PAGE):
            page = entries[start : start + PAGE]
            args: list[str | int] = []
            for stored in page:
                args += [stored.entry, len(stored.line) - 1]
            try:
                answer = await self._delete(keys=[self.key, self.bytes_key], args=args)
            except (RedisError, OSError) as error:
                raise _unavailable(error) from error
            self._size = int(answer[0])
            gone = {_text(entry) for entry in answer[1:]}
            deleted.extend(stored for stored in page if stored.entry in gone)
        if self.max_bytes is None or self._size < self.max_bytes:
            self.at_cap = False
        return deleted

    async def take(self, chosen: Callable[[StoredLetter], bool]) -> list[StoredLetter]:
        """Remove the letters `chosen` picks; the ones removed (lines that do not decode
        are never picked)."""
        picked = [s async for s in self.read() if isinstance(s.letter, DeadLetter) and chosen(s)]
        return await self.delete(picked) if picked else []

    async def move_aside(self, entries: list[StoredLetter], aside: str) -> list[StoredLetter]:
        """Move these entries to the stream `aside` (a replay's); the ones moved (not those
        another replay or purge took first)."""
        moved: list[StoredLetter] = []
        for start in range(0, len(entries), PAGE):
            page = entries[start : start + PAGE]
            try:
                answer = await self._move_aside(
                    keys=[self.key, self.bytes_key, aside], args=[s.entry for s in page]
                )
            except (RedisError, OSError) as error:
                raise _unavailable(error) from error
            self._size = int(answer[0])
            gone = {_text(entry) for entry in answer[1:]}
            moved.extend(stored for stored in page if stored.entry in gone)
        return moved

    async def put_back(self, aside: str, heartbeat: str, only_if_expired: bool) -> int | None:
        """Move every entry of `aside` back to the stream, a page per step; how many, or
        None (nothing moved) when `only_if_expired` and its heartbeat is still there."""
        moved = 0
        while True:
            try:
                count = int(
                    await self._put_back(
                        keys=[aside, self.key, self.bytes_key, heartbeat],
                        args=[PAGE, "1" if only_if_expired else "0"],
                    )
                )
            except (RedisError, OSError) as error:
                raise _unavailable(error) from error
            if count < 0:
                return None if moved == 0 else moved
            moved += count
            if count < PAGE:
                return moved


async def read_stream(redis: Redis, key: str) -> AsyncIterator[StoredLetter]:
    """Every entry of the letter stream `key` (a sync's, or a replay's aside), oldest
    first, a page at a time."""
    where = f"redis {key}"
    start = "-"
    while True:
        try:
            page: list[Any] = await redis.xrange(key, min=start, count=PAGE) or []
        except (RedisError, OSError) as error:
            raise _unavailable(error) from error
        for entry, fields in page:
            line = bytes(fields.get(b"line", b"")) + b"\n"
            yield StoredLetter(_text(entry), line, decode_line(line, where))
        if len(page) < PAGE:
            return
        start = "(" + _text(page[-1][0])


def _text(value: bytes | str) -> str:
    return value.decode() if isinstance(value, bytes) else value


def _unavailable(error: BaseException) -> DeadLetterStoreUnavailable:
    return DeadLetterStoreUnavailable(f"dead letters in Redis: {type(error).__name__}: {error}")


def cluster_dead_letters(config: Config, redis: Redis, sync: str) -> RedisDeadLetters:
    """The sync's dead letters for a config with [cluster]: named after its stream (the
    default stream FORWARDER keeps them under forwarder:dead:<sync>), capped at
    storage.dead_letter_max_bytes, the same for every node and the CLI."""
    assert config.cluster is not None, "cluster_dead_letters needs a [cluster] config"
    prefix = f"{config.cluster.subject_prefix}:dead"
    return RedisDeadLetters(redis, sync, config.storage.dead_letter_max_bytes, prefix)

"""Profiles in Redis, one value per user holding the last stream sequence it includes.

A value is a msgpack array [seq, profile] whose seq is always encoded as a uint64 (0xcf
and eight big-endian bytes), so the flush script reads it with GETRANGE without decoding
the profile. A put belongs to the stream sequence given to `begin`; a put for a user
whose stored seq is that one or later is a redelivered message's change, already applied,
and is ignored (counted). The flush script writes a value only over a lower seq, so a
node that lost its partitions never overwrites what the new owner wrote.
"""

from __future__ import annotations

from collections import OrderedDict
from collections.abc import Callable, Collection, Iterable
from dataclasses import dataclass
from typing import Any

import msgspec
from redis.asyncio import Redis
from redis.exceptions import RedisError

from forwarder.cluster.errors import ClusterUnavailable
from forwarder.store.profiles import Profile

DEFAULT_PREFIX = "forwarder:profile"
# Keys per MGET and per script call: large enough that a request's users go in one round
# trip, small enough that one script never holds Redis for long.
CHUNK = 1000
_HEADER = b"\x92\xcf"  # msgpack: an array of two, then a uint64
_HEADER_BYTES = len(_HEADER) + 8

# KEYS: the users' keys. ARGV: per key its seq then its value. Writes each value only
# where no value is stored or the stored seq is lower; returns the 1-based indexes of
# the keys it left alone (a newer writer was there first).
WRITE_NEWER = """
local refused = {}
for i, key in ipairs(KEYS) do
  local seq = tonumber(ARGV[2 * i - 1])
  local head = redis.call('GETRANGE', key, 0, 9)
  local stored = -1
  if #head == 10 then
    stored = 0
    for j = 3, 10 do stored = stored * 256 + string.byte(head, j) end
  end
  if stored < seq then
    redis.call('SET', key, ARGV[2 * i])
  else
    refused[#refused + 1] = i
  end
end
return refused
"""

_encode = msgspec.msgpack.Encoder().encode
_decode_profile = msgspec.msgpack.Decoder(dict[str, Any]).decode


class ProfileStoreUnavailable(ClusterUnavailable):
    """Redis did not answer a profile read or write: the caller retries (what was put
    stays unflushed until a flush succeeds)."""


def encode_value(seq: int, profile: Profile) -> bytes:
    return _HEADER + seq.to_bytes(8, "big") + _encode(profile)


def decode_value(value: bytes) -> tuple[int, Profile]:
    if len(value) < _HEADER_BYTES or not value.startswith(_HEADER):
        raise ValueError("not a profile value: expected [uint64 seq, map]")
    return int.from_bytes(value[2:_HEADER_BYTES], "big"), _decode_profile(value[_HEADER_BYTES:])


@dataclass(slots=True)
class _Cached:
    # The stream sequence the profile includes; -1 when nothing is stored.
    seq: int
    profile: Profile


_ABSENT = _Cached(-1, {})


@dataclass
class ProfileCounts:
    """What the store did, for metrics and tests."""

    loaded: int = 0
    flushed: int = 0
    # Puts ignored because the user's stored profile already includes that sequence.
    already_applied: int = 0
    # Writes the script refused because another writer stored a later sequence.
    stale_refused: int = 0
    evicted: int = 0


class RedisProfileStore:
    """The ProfileStore role in Redis, with a bounded LRU cache in front.

    Only users of partitions this node owns stay cached between loads (`keep_only`);
    others are read again at every load, as their owner may have changed them.
    """

    def __init__(
        self,
        redis: Redis,
        capacity: int,
        prefix: str = DEFAULT_PREFIX,
        partition_of: Callable[[str], int] | None = None,
    ) -> None:
        self.redis = redis
        self.capacity = capacity
        self.prefix = prefix
        self.counts = ProfileCounts()
        # Every put before the last flush began is stored through this sequence.
        self.flushed_through = -1
        self._partition_of = partition_of
        self._owned: frozenset[int] | None = None
        self._cache: OrderedDict[str, _Cached] = OrderedDict()
        # Puts not yet written: the user's latest (seq, profile).
        self._dirty: dict[str, _Cached] = {}
        self._seq: int | None = None
        self._write_newer = redis.register_script(WRITE_NEWER)

    def key(self, user: str) -> str:
        return f"{self.prefix}:{user}"

    def begin(self, seq: int) -> None:
        """The puts that follow belong to stream sequence `seq` (until the next begin)."""
        self._seq = seq

    def keep_only(self, partitions: Collection[int]) -> None:
        """Cache only users of these partitions (the ones this node owns now)."""
        self._owned = frozenset(partitions)
        if self._partition_of is not None:
            self.forget([u for u in self._cache if not self._is_owned(u)])

    def forget(self, users: Iterable[str]) -> None:
        """Drop these users from the cache (their partition went to another node); their
        unflushed puts still go out at the next flush, where the script refuses them if
        the new owner has written since."""
        for user in users:
            self._cache.pop(user, None)

    def _is_owned(self, user: str) -> bool:
        if self._partition_of is None or self._owned is None:
            return True
        return self._partition_of(user) in self._owned

    # --- the ProfileStore role ---------------------------------------------------------

    async def load(self, users: Collection[str]) -> None:
        cache, dirty = self._cache, self._dirty
        wanted = [u for u in users if u not in dirty and (u not in cache or not self._is_owned(u))]
        if not wanted:
            return
        try:
            async with self.redis.pipeline(transaction=False) as pipe:
                for start in range(0, len(wanted), CHUNK):
                    pipe.mget([self.key(u) for u in wanted[start : start + CHUNK]])
                answers = await pipe.execute()
        except (RedisError, OSError) as error:
            raise ProfileStoreUnavailable(f"profiles in Redis: {_said(error)}") from error
        values = [value for chunk in answers for value in chunk]
        for user, value in zip(wanted, values, strict=True):
            if value is None:
                self._remember(user, _Cached(-1, {}))
            else:
                seq, profile = decode_value(value)
                self._remember(user, _Cached(seq, profile))
        self.counts.loaded += len(wanted)

    def _entry(self, user: str) -> _Cached:
        entry = self._dirty.get(user)
        if entry is not None:
            return entry
        entry = self._cache.get(user)
        if entry is None:
            return _ABSENT
        self._cache.move_to_end(user)
        return entry

    def get(self, user: str) -> Profile:
        return self._entry(user).profile

    def is_new(self, user: str) -> bool:
        return self._entry(user).seq < 0

    def applied(self, user: str) -> int:
        """The stream sequence the user's profile includes as this node knows it (-1: none)."""
        return self._entry(user).seq

    def put(self, user: str, profile: Profile) -> None:
        seq = self._seq
        if seq is None:
            raise RuntimeError("RedisProfileStore.put before begin(seq)")
        if self._entry(user).seq >= seq:
            # A redelivered message: its change is in the stored profile already.
            self.counts.already_applied += 1
            return
        entry = _Cached(seq, profile)
        self._dirty[user] = entry
        self._remember(user, entry)

    def _remember(self, user: str, entry: _Cached) -> None:
        cache = self._cache
        cache[user] = entry
        cache.move_to_end(user)
        while len(cache) > self.capacity:
            cache.popitem(last=False)
            self.counts.evicted += 1

    async def flush(self) -> None:
        dirty = self._dirty
        through = self._seq if self._seq is not None else -1
        if not dirty:
            self.flushed_through = max(self.flushed_through, through)
            return
        users = list(dirty)
        entries = [dirty[u] for u in users]
        refused: list[int] = []
        try:
            async with self.redis.pipeline(transaction=False) as pipe:
                for start in range(0, len(users), CHUNK):
                    keys = [self.key(u) for u in users[start : start + CHUNK]]
                    args: list[bytes | int] = []
                    for entry in entries[start : start + CHUNK]:
                        args += [entry.seq, encode_value(entry.seq, entry.profile)]
                    await self._write_newer(keys=keys, args=args, client=pipe)
                answers = await pipe.execute()
        except (RedisError, OSError) as error:
            raise ProfileStoreUnavailable(f"profiles in Redis: {_said(error)}") from error
        for chunk, answer in enumerate(answers):
            refused.extend(chunk * CHUNK + int(i) - 1 for i in answer)
        for user, entry in zip(users, entries, strict=True):
            # A put made while the flush was on the wire stays dirty for the next one.
            if dirty.get(user) is entry:
                del dirty[user]
        for index in refused:
            # Someone stored a later sequence: our copy is stale, read it again next time.
            self._cache.pop(users[index], None)
        self.counts.flushed += len(users) - len(refused)
        self.counts.stale_refused += len(refused)
        self.flushed_through = max(self.flushed_through, through)

    async def close(self) -> None:
        await self.flush()


def _said(error: BaseException) -> str:
    return f"{type(error).__name__}: {error}"

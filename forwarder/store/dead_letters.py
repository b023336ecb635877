"""Dead letters: items Iterable refused for good, one JSON line each, per sync."""

from __future__ import annotations

import errno
import hashlib
import os
import time
from collections.abc import Awaitable, Iterable, Iterator
from pathlib import Path
from typing import Any, Protocol

import msgspec

from forwarder.errors import Failure
from forwarder.iterable import Endpoint, Item, TrackEvent, UpdateEmail, UserUpdate


class DeadLetter(msgspec.Struct, kw_only=True):
    # When the item last failed (a replay that fails again writes a new letter).
    time: float
    sync: str
    endpoint: str
    # A FailureKind value; absent in letters written before kinds existed.
    kind: str | None = None
    reason: str
    attempts: int
    item: dict[str, Any]
    # When the item first failed, kept through replays; None until it is replayed.
    first_failed_at: float | None = None

    @property
    def label(self) -> str:
        """What the letter is counted under: its kind, or the reason of an older letter."""
        return self.kind or self.reason

    @property
    def failed_first(self) -> float:
        return self.first_failed_at if self.first_failed_at is not None else self.time

    def to_item(self) -> Item:
        if self.endpoint == Endpoint.TRACK_BULK.value:
            return msgspec.convert(self.item, TrackEvent)
        if self.endpoint == Endpoint.UPDATE_EMAIL.value:
            return msgspec.convert(self.item, UpdateEmail)
        return msgspec.convert(self.item, UserUpdate)


_encoder = msgspec.json.Encoder()
_decoder = msgspec.json.Decoder(DeadLetter)


def encode_letter(letter: DeadLetter) -> bytes:
    return _encoder.encode(letter) + b"\n"


def letter_id(line: bytes) -> str:
    """A letter's stable id: a short hash of its line, the same before and after a purge
    or replay moves other letters around it (a byte offset would not be)."""
    return hashlib.blake2b(line.rstrip(b"\n"), digest_size=6).hexdigest()


def dead_letter_path(storage_path: str | Path, sync: str) -> Path:
    return Path(storage_path) / "dead-letters" / f"{sync}.jsonl"


class DeadLetterCapReached(OSError):
    """The dead-letter file is at `storage.dead_letter_max_bytes`: nothing more is written
    (the items wait, unacknowledged, as for a full disk) until a replay or purge."""

    def __init__(self, path: Path | str, size: int, cap: int) -> None:
        super().__init__(
            errno.ENOSPC,
            f"{path} holds {size} bytes, at storage.dead_letter_max_bytes ({cap}): "
            "replay or purge dead letters",
        )


class DeadLetterSink(Protocol):
    """Where one sync's dead letters go: a file on this host (embedded mode) or Redis
    (cluster mode), capped at `max_bytes`."""

    max_bytes: int | None
    # True from a write the cap refused until one is taken again.
    at_cap: bool

    @property
    def where(self) -> str:
        """The place, for log lines and errors."""

    def size(self) -> int:
        """Bytes held (as last seen: a shared store may have changed since)."""

    def write(self, letters: list[DeadLetter]) -> int | Awaitable[int]:
        """Store the letters durably; how many (the first ones) went, or an awaitable of
        that. Raises (or the awaitable raises) OSError or ForwarderError when refused,
        DeadLetterCapReached when none fits under the cap."""


class DeadLetterFile:
    """Appends dead letters for one sync.

    The file is opened per write (dead letters are rare), so a replay or purge can move
    the file aside while the daemon runs and the daemon's next write starts a fresh one.
    """

    def __init__(self, path: Path, fsync: bool, max_bytes: int | None = None) -> None:
        self.path = path
        self.fsync = fsync
        self.max_bytes = max_bytes
        # True from a write the cap refused until one is taken again.
        self.at_cap = False

    @property
    def where(self) -> str:
        return str(self.path)

    def size(self) -> int:
        try:
            return self.path.stat().st_size
        except FileNotFoundError:
            return 0

    def write(self, letters: list[DeadLetter]) -> int:
        """Append the letters, durably when `fsync`; how many (the first ones) went.

        A write that fails part way (a full disk) is cut back, so the file never holds a
        torn line and a later retry writes each letter once. Past `max_bytes` only the
        first letters that fit go (one at least into an empty file, whatever its size),
        and with none it raises DeadLetterCapReached.
        """
        if not letters:
            return 0
        return self.append_lines([encode_letter(letter) for letter in letters], capped=True)

    def append_lines(self, lines: Iterable[bytes], capped: bool = False) -> int:
        """Append whole lines as they are; how many. Lines put back by a replay or purge
        are not held to the cap (`capped`): they were on disk already."""
        chunks = list(lines)
        if not chunks:
            return 0
        self.path.parent.mkdir(parents=True, exist_ok=True)
        fd = os.open(self.path, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o600)
        try:
            start = os.fstat(fd).st_size
            if capped and self.max_bytes is not None:
                fitting = _fitting(chunks, self.max_bytes - start, empty=start == 0)
                self.at_cap, chunks = len(fitting) < len(chunks), fitting
                if not chunks:
                    raise DeadLetterCapReached(self.path, start, self.max_bytes)
            data = b"".join(chunks)
            try:
                view = memoryview(data)
                while view:
                    view = view[os.write(fd, view) :]
                if self.fsync:
                    os.fsync(fd)
            except OSError:
                os.ftruncate(fd, start)
                raise
        finally:
            os.close(fd)
        return len(chunks)


def letter_file(sink: DeadLetterSink) -> DeadLetterFile:
    """The sink as a file, for what works on files only (replay moves files aside);
    ValueError for another sink."""
    if not isinstance(sink, DeadLetterFile):
        raise ValueError(f"dead letters in {sink.where} are not a file: replay needs one")
    return sink


def _fitting(chunks: list[bytes], room: int, empty: bool) -> list[bytes]:
    """The first chunks that fit in `room` bytes; the first one alone into an empty
    file even if it does not (a letter larger than the cap must not wait forever)."""
    taken = 0
    for index, chunk in enumerate(chunks):
        taken += len(chunk)
        if taken > room:
            return chunks[: max(index, 1 if empty else 0)]
    return chunks


def make_letter(
    sync: str,
    endpoint: Endpoint,
    item: Item,
    failure: Failure,
    attempts: int,
    first_failed_at: float | None = None,
) -> DeadLetter:
    return DeadLetter(
        time=time.time(),
        sync=sync,
        endpoint=endpoint.value,
        kind=failure.kind.value,
        reason=failure.detail,
        attempts=attempts,
        item=msgspec.to_builtins(item),
        first_failed_at=first_failed_at,
    )


def decode_line(line: bytes, where: str) -> DeadLetter | str:
    """The line's letter, or its error text (prefixed with `where`) when it does not decode."""
    try:
        return _decoder.decode(line)
    except msgspec.DecodeError as error:
        return f"{where}: {error}"


def read_lines(path: Path) -> Iterator[tuple[bytes, DeadLetter | str]]:
    """Each non-blank line with its decoding, or its error text when it does not decode."""
    try:
        file = open(path, "rb")
    except FileNotFoundError:
        return
    with file:
        for number, line in enumerate(file, 1):
            if not line.strip():
                continue
            if not line.endswith(b"\n"):
                line += b"\n"
            try:
                yield line, _decoder.decode(line)
            except msgspec.DecodeError as error:
                yield line, f"{path}:{number}: {error}"


def read_letters(path: Path) -> Iterator[DeadLetter | str]:
    """Each line decoded; a line that does not decode is yielded as its error text."""
    for _, letter in read_lines(path):
        yield letter

"""Dead letters: items Iterable refused for good, one JSON line each, per sync."""

from __future__ import annotations

import os
import time
from pathlib import Path
from typing import Any, Iterator

import msgspec

from forwarder.errors import Failure
from forwarder.iterable import Endpoint, Item, TrackEvent, UpdateEmail, UserUpdate


class DeadLetter(msgspec.Struct, kw_only=True):
    time: float
    sync: str
    endpoint: str
    # A FailureKind value; absent in letters written before kinds existed.
    kind: str | None = None
    reason: str
    attempts: int
    item: dict[str, Any]

    @property
    def label(self) -> str:
        """What the letter is counted under: its kind, or the reason of an older letter."""
        return self.kind or self.reason

    def to_item(self) -> Item:
        if self.endpoint == Endpoint.TRACK_BULK.value:
            return msgspec.convert(self.item, TrackEvent)
        if self.endpoint == Endpoint.UPDATE_EMAIL.value:
            return msgspec.convert(self.item, UpdateEmail)
        return msgspec.convert(self.item, UserUpdate)


_encoder = msgspec.json.Encoder()
_decoder = msgspec.json.Decoder(DeadLetter)


def dead_letter_path(storage_path: str | Path, sync: str) -> Path:
    return Path(storage_path) / "dead-letters" / f"{sync}.jsonl"


class DeadLetterFile:
    """Appends dead letters for one sync.

    The file is opened per write (dead letters are rare), so `--replay` can move the file
    aside while the daemon runs and the daemon's next write starts a fresh one.
    """

    def __init__(self, path: Path, fsync: bool) -> None:
        self.path = path
        self.fsync = fsync

    def write(self, letters: list[DeadLetter]) -> None:
        """Append the letters, durably when `fsync`; all of them or, on an error, none.

        A write that fails part way (a full disk) is cut back, so the file never holds a
        torn line and a later retry writes each letter once.
        """
        if not letters:
            return
        self.path.parent.mkdir(parents=True, exist_ok=True)
        data = b"".join(_encoder.encode(letter) + b"\n" for letter in letters)
        fd = os.open(self.path, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o600)
        try:
            start = os.fstat(fd).st_size
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


def make_letter(
    sync: str, endpoint: Endpoint, item: Item, failure: Failure, attempts: int
) -> DeadLetter:
    return DeadLetter(
        time=time.time(),
        sync=sync,
        endpoint=endpoint.value,
        kind=failure.kind.value,
        reason=failure.detail,
        attempts=attempts,
        item=msgspec.to_builtins(item),
    )


def read_letters(path: Path) -> Iterator[DeadLetter | str]:
    """Each line decoded; a line that does not decode is yielded as its error text."""
    if not path.exists():
        return
    with open(path, "rb") as file:
        for number, line in enumerate(file, 1):
            if not line.strip():
                continue
            try:
                yield _decoder.decode(line)
            except msgspec.DecodeError as error:
                yield f"{path}:{number}: {error}"

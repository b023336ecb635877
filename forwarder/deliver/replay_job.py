"""One sync's replay: letters moved aside go into a sync's lanes, and the aside file is
kept until every one of them is settled (delivered, or dead-lettered again)."""

from __future__ import annotations

import asyncio
from collections import Counter
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Any

import msgspec

from forwarder.deliver.origin import LetterOrigin
from forwarder.deliver.sync import SyncDelivery
from forwarder.iterable import Endpoint
from forwarder.store.dead_letters import DeadLetter, DeadLetterFile, encode_letter, letter_file
from forwarder.store.letter_aside import Aside

# Replayed items queued and not yet settled, at most: a replay of a million letters must
# not fill the queue that ingest needs (a full queue answers 429).
REPLAY_WINDOW = 1000


@dataclass
class ReplayProgress:
    """What a replay of one sync has done so far."""

    sync: str
    total: int = 0
    resent: int = 0
    delivered: int = 0
    dead_again: int = 0
    # Letters whose item does not decode: put back as they were, never sent.
    unsendable: int = 0
    by_kind: Counter[str] = field(default_factory=Counter)

    @property
    def left(self) -> int:
        return self.total - self.delivered - self.dead_again - self.unsendable

    def to_json(self) -> dict[str, Any]:
        return {
            "sync": self.sync,
            "total": self.total,
            "resent": self.resent,
            "delivered": self.delivered,
            "dead_again": self.dead_again,
            "left": self.left,
            "unsendable": self.unsendable,
            "by_kind": dict(self.by_kind.most_common()),
        }


def progress_line(progress: list[ReplayProgress]) -> str:
    return "; ".join(
        f"{p.sync}: resent {p.resent}, delivered {p.delivered}, "
        f"dead again {p.dead_again}, left {p.left}"
        for p in progress
    )


class SyncReplay:
    """Feeds one aside file's letters to `delivery`, a window at a time.

    Each item goes out as it was (its createdAt and id untouched); one that fails again
    gets a new letter with its new `time` and the `first_failed_at` of the old one.
    """

    def __init__(self, delivery: SyncDelivery, aside: Aside, window: int = REPLAY_WINDOW) -> None:
        self.delivery = delivery
        self.aside = aside
        self.window = max(1, min(window, delivery.sync.delivery.max_queued_items // 4))
        self.progress = ReplayProgress(delivery.name, aside.count, by_kind=aside.by_kind.copy())
        self.done = asyncio.Event()
        self._letters: Iterator[DeadLetter] = aside.letters()
        self._outstanding: set[LetterOrigin] = set()
        self._room = asyncio.Event()
        self._read_all = False

    async def run(self) -> None:
        while True:
            while len(self._outstanding) >= self.window:
                self._room.clear()
                await self._room.wait()
            letter = next(self._letters, None)
            if letter is None:
                break
            try:
                endpoint, item = Endpoint(letter.endpoint), letter.to_item()
            except (ValueError, msgspec.ValidationError):
                # Not an item we can send (edited by hand?): it goes back as it was.
                back = letter_file(self.delivery.settlement.dead_letters)
                back.append_lines([encode_letter(letter)])
                self.progress.unsendable += 1
                continue
            origin = LetterOrigin(letter, self._settled)
            self._outstanding.add(origin)
            self.progress.resent += 1
            self.delivery.enqueue(endpoint, item, origin=origin)
            if self.progress.resent % 100 == 0:
                await asyncio.sleep(0)  # let the daemon serve between chunks
        self._read_all = True
        self._finish_if_settled()

    def _settled(self, origin: LetterOrigin, delivered: bool) -> None:
        if origin not in self._outstanding:
            return
        self._outstanding.discard(origin)
        if delivered:
            self.progress.delivered += 1
        else:
            self.progress.dead_again += 1
        self._room.set()
        self._finish_if_settled()

    def _finish_if_settled(self) -> None:
        if self._read_all and not self._outstanding and not self.done.is_set():
            # Every letter is delivered or written again: the aside copy is not needed.
            self.aside.path.unlink(missing_ok=True)
            self.done.set()

    def put_back(self, dead_letters: DeadLetterFile) -> int:
        """Stop: the letters not settled (queued, in flight, or not read yet) go back to
        the dead-letter file as they were, and the aside file goes; how many."""
        if self.done.is_set():
            return 0
        letters = [origin.letter for origin in self._outstanding]
        letters.extend(self._letters)
        # Told no more: a late settle must not count or finish a replay that is over.
        self._outstanding.clear()
        dead_letters.append_lines(encode_letter(letter) for letter in letters)
        self.aside.path.unlink(missing_ok=True)
        self.done.set()
        return len(letters)

"""Checkpoint progress (pure): which records are settled, and how far the log may be cut.

A record is settled when every item routed from it was delivered or dead-lettered. The
checkpoint is the highest sequence number with it and every record before it settled.
"""

from __future__ import annotations


class Progress:
    def __init__(self, checkpoint: int) -> None:
        self.checkpoint = checkpoint
        self._outstanding: dict[int, int] = {}
        self._finished: set[int] = set()

    def expect(self, seq: int, items: int) -> None:
        """Record `seq` waits for `items` settlements (0: it is settled already)."""
        if items <= 0:
            self._finish(seq)
        else:
            self._outstanding[seq] = items

    def settle(self, seq: int, items: int = 1) -> None:
        left = self._outstanding.get(seq, 0) - items
        if left > 0:
            self._outstanding[seq] = left
        else:
            self._finish(seq)

    def forget(self, seq: int) -> None:
        """Nothing of `seq` is owed (its write failed and the client was told so)."""
        self._finish(seq)

    def _finish(self, seq: int) -> None:
        self._outstanding.pop(seq, None)
        self._finished.add(seq)
        following = self.checkpoint + 1
        while following in self._finished:
            self._finished.discard(following)
            self.checkpoint = following
            following += 1

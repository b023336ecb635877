"""Checkpoint progress (pure): which records are settled, and how far the log may be cut.

A record is settled when every item routed from it was delivered or dead-lettered. The
checkpoint is just below the oldest record still waiting, or the newest record known when
none waits. A seq never expected (its write failed, or recovery skipped its damaged
frame) holds nothing back.
"""

from __future__ import annotations


class Progress:
    def __init__(self, checkpoint: int) -> None:
        self._newest = checkpoint
        # Seqs are expected in increasing order, so the first key is the oldest waiting.
        self._outstanding: dict[int, int] = {}

    @property
    def checkpoint(self) -> int:
        for oldest in self._outstanding:
            return oldest - 1
        return self._newest

    def expect(self, seq: int, items: int) -> None:
        """Record `seq` waits for `items` settlements (0: it is settled already).

        Called in increasing seq order.
        """
        self._newest = max(self._newest, seq)
        if items > 0:
            self._outstanding[seq] = items

    def settle(self, seq: int, items: int = 1) -> None:
        left = self._outstanding.get(seq)
        if left is None:
            return
        if left > items:
            self._outstanding[seq] = left - items
        else:
            del self._outstanding[seq]

    def forget(self, seq: int) -> None:
        """Nothing of `seq` is owed (its write failed and the client was told so)."""
        self._outstanding.pop(seq, None)
        self._newest = max(self._newest, seq)

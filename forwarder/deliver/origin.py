"""Where a replayed item came from: its dead letter, and who is told when it settles."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

from forwarder.store.dead_letters import DeadLetter


@dataclass(eq=False, slots=True)
class LetterOrigin:
    letter: DeadLetter
    # Called once the item is settled for good: True when delivered, False when it was
    # dead-lettered again (its new letter is on disk by then).
    settled: Callable[[LetterOrigin, bool], None]

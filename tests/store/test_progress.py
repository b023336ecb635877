"""Checkpoint progress: the checkpoint waits for the oldest unsettled record."""

from __future__ import annotations

from forwarder.store.progress import Progress


def test_progress_checkpoint_waits_for_the_oldest_record() -> None:
    progress = Progress(0)
    for seq in (1, 2, 3):
        progress.expect(seq, 2)
    progress.settle(2, 2)
    progress.settle(3, 2)
    assert progress.checkpoint == 0
    progress.settle(1)
    assert progress.checkpoint == 0
    progress.settle(1)
    assert progress.checkpoint == 3
    progress.expect(4, 0)
    assert progress.checkpoint == 4


def test_a_forgotten_record_lets_the_checkpoint_pass() -> None:
    progress = Progress(10)
    progress.expect(11, 3)
    progress.expect(12, 1)
    progress.settle(12)
    progress.forget(11)
    assert progress.checkpoint == 12

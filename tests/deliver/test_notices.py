"""Rate-limited log lines: one per key per interval, counting those held back."""

from __future__ import annotations

from forwarder.deliver.notices import Notices


def test_one_line_per_key_per_interval_with_the_count_held_back() -> None:
    notices = Notices(interval=10.0)
    assert notices.due("a", 0.0) == 0
    assert [notices.due("a", t) for t in (1.0, 2.0, 9.9)] == [None, None, None]
    assert notices.due("b", 5.0) == 0  # keys are independent
    assert notices.due("a", 10.0) == 3
    assert notices.due("a", 20.5) == 0

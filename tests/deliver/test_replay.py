"""Choosing dead letters, moving them aside and back, and replaying them in this process."""

from __future__ import annotations

import os
from pathlib import Path

import msgspec
import pytest

from forwarder.deliver.letter_query import purge, summarize
from forwarder.deliver.letter_select import LetterFilter, parse_since
from forwarder.deliver.replay import replay
from forwarder.errors import Failure, FailureKind
from forwarder.iterable import Endpoint, TrackEvent, UserUpdate
from forwarder.sim import SimulatorConfig, SimulatorState, build_simulator_app
from forwarder.store.dead_letters import (
    DeadLetter,
    DeadLetterCapReached,
    DeadLetterFile,
    dead_letter_path,
    letter_id,
    make_letter,
    read_letters,
)
from forwarder.store.letter_aside import REPLAYING, restore_asides, take_aside
from tests.harness import make_config, serve

DAY = 86400.0


def letter(
    n: int,
    kind: FailureKind = FailureKind.USER_NOT_FOUND,
    at: float = 1_700_000_000.0,
    email: str | None = None,
) -> DeadLetter:
    event = TrackEvent(
        eventName="Buy", id=f"ev-{n}", createdAt=1_600_000_000 + n, email=email or f"u{n}@x.com"
    )
    made = make_letter("test", Endpoint.TRACK_BULK, event, Failure(kind, f"{kind.value}: n{n}"), 3)
    made.time = at
    return made


def lines(path: Path) -> list[DeadLetter | str]:
    return list(read_letters(path))


# --- choosing -------------------------------------------------------------------------


def test_since_takes_durations_and_iso_times() -> None:
    now = 1_700_000_000.0
    assert parse_since("2h", now) == now - 7200
    assert parse_since("90s", now) == now - 90
    assert parse_since("7d", now) == now - 7 * DAY
    assert parse_since("2023-11-14T22:13:20Z", now) == 1_700_000_000.0
    # No zone means UTC, not the machine's zone.
    assert parse_since("2023-11-14T22:13:20", now) == 1_700_000_000.0
    with pytest.raises(ValueError, match="duration"):
        parse_since("yesterday", now)


def test_filter_matches_kind_reason_substring_time_and_id() -> None:
    old = letter(1, FailureKind.USER_NOT_FOUND, at=1000.0)
    new = letter(2, FailureKind.INVALID_IDENTITY, at=5000.0)
    assert LetterFilter(reason="user_not_found").matches(old, "abc")
    assert not LetterFilter(reason="user_not_found").matches(new, "abc")
    assert LetterFilter(reason="N2").matches(new, "abc")  # in the reason, any case
    assert LetterFilter(since=2000.0).matches(new, "abc")
    assert not LetterFilter(since=2000.0).matches(old, "abc")
    assert LetterFilter(id="ab").matches(old, "abc")
    assert not LetterFilter(id="b").matches(old, "abc")
    assert LetterFilter().everything and not LetterFilter(id="a").everything


# --- the file: cap, aside, restore -----------------------------------------------------


def test_the_cap_takes_the_letters_that_fit_and_refuses_the_rest(tmp_path: Path) -> None:
    one = len(msgspec.json.encode(letter(1))) + 1
    path = tmp_path / "test.jsonl"
    file = DeadLetterFile(path, fsync=False, max_bytes=2 * one + 10)
    assert file.write([letter(1), letter(2), letter(3)]) == 2
    assert path.stat().st_size == 2 * one and file.at_cap
    with pytest.raises(DeadLetterCapReached, match="dead_letter_max_bytes"):
        file.write([letter(4)])
    assert path.stat().st_size == 2 * one
    # Put-back lines were on disk already: the cap does not hold them out.
    assert file.append_lines([msgspec.json.encode(letter(4)) + b"\n"]) == 1
    assert len(lines(path)) == 3
    # A letter larger than the whole cap still goes into an empty file, so it cannot
    # wait forever.
    small = DeadLetterFile(tmp_path / "small.jsonl", fsync=False, max_bytes=10)
    assert small.write([letter(5), letter(6)]) == 1 and small.at_cap


def test_take_aside_keeps_the_rest_and_unreadable_lines_in_place(tmp_path: Path) -> None:
    path = tmp_path / "test.jsonl"
    file = DeadLetterFile(path, fsync=False)
    file.write(
        [letter(n, FailureKind.USER_NOT_FOUND if n % 2 else FailureKind.REFUSED) for n in range(6)]
    )
    file.append_lines([b"{not json\n"])
    aside = take_aside(path, lambda line, l: l.kind == "refused", REPLAYING, fsync=False)
    assert aside is not None and aside.count == 3 and aside.by_kind == {"refused": 3}
    assert [l.item["id"] for l in aside.letters()] == ["ev-0", "ev-2", "ev-4"]
    left = lines(path)
    assert [l.item["id"] for l in left if isinstance(l, DeadLetter)] == ["ev-1", "ev-3", "ev-5"]
    assert sum(isinstance(l, str) for l in left) == 1
    assert [p.name for p in tmp_path.iterdir() if ".taking" in p.name] == []


def test_restore_puts_back_what_a_dead_process_left_and_spares_a_live_one(
    tmp_path: Path,
) -> None:
    path = tmp_path / "test.jsonl"
    DeadLetterFile(path, fsync=False).write([letter(1)])
    dead_pid = 2**22 + 17  # above pid_max's default: no such process
    crashed = tmp_path / f"test.jsonl{REPLAYING}1700000000000-{dead_pid}"
    DeadLetterFile(crashed, fsync=False).write([letter(2), letter(3)])
    # A split cut short leaves a partial copy beside the whole aside file: dropped.
    (tmp_path / f"{crashed.name}.taking").write_bytes(msgspec.json.encode(letter(2)) + b"\n")
    live = tmp_path / f"test.jsonl{REPLAYING}1700000000000-{os.getppid()}"
    DeadLetterFile(live, fsync=False).write([letter(4)])
    assert restore_asides(tmp_path) == 2
    assert sorted(l.item["id"] for l in lines(path) if isinstance(l, DeadLetter)) == [
        "ev-1",
        "ev-2",
        "ev-3",
    ]
    assert sorted(p.name for p in tmp_path.iterdir()) == sorted(["test.jsonl", live.name])


def test_purge_removes_only_the_matching_letters(tmp_path: Path) -> None:
    config = make_config(tmp_path, "http://127.0.0.1:9")
    path = dead_letter_path(config.storage.path, "test")
    DeadLetterFile(path, fsync=False).write(
        [letter(1, at=1000.0), letter(2, FailureKind.REFUSED, at=2000.0), letter(3, at=3000.0)]
    )
    ids = {l.item["id"]: letter_id(msgspec.json.encode(l)) for l in [letter(1, at=1000.0)]}
    (before,) = summarize(config, None, LetterFilter(reason="user_not_found"))
    assert before.total == 2 and before.oldest == 1000.0 and before.newest == 3000.0
    (removed,) = purge(config, None, LetterFilter(reason="user_not_found", since=2500.0))
    assert removed.by_kind == {"user_not_found": 1}
    assert [l.item["id"] for l in lines(path) if isinstance(l, DeadLetter)] == ["ev-1", "ev-2"]
    (removed,) = purge(config, None, LetterFilter(id=ids["ev-1"]))
    assert removed.total == 1
    assert [l.item["id"] for l in lines(path) if isinstance(l, DeadLetter)] == ["ev-2"]
    assert sorted(p.name for p in path.parent.iterdir()) == ["test.jsonl"]


def test_letters_of_a_sync_no_longer_configured_are_listed_and_purged(tmp_path: Path) -> None:
    """A reload that removed a sync leaves its file (and recovery its `sync_removed`
    letters): the operator still sees them, by name too, and can purge them."""
    config = make_config(tmp_path, "http://127.0.0.1:9")
    gone = dead_letter_path(config.storage.path, "gone")
    DeadLetterFile(gone, fsync=False).write([letter(1), letter(2, FailureKind.SYNC_REMOVED)])
    summaries = summarize(config, None, LetterFilter())
    assert [(s.sync, s.total) for s in summaries] == [("test", 0), ("gone", 2)]
    (only,) = summarize(config, "gone", LetterFilter(reason="sync_removed"))
    assert only.by_kind == {"sync_removed": 1}
    (removed,) = purge(config, "gone", LetterFilter())
    assert removed.total == 2
    with pytest.raises(KeyError):
        summarize(config, "never-was", LetterFilter())


# --- replay in this process ------------------------------------------------------------


async def test_replay_sends_items_as_they_were_and_keeps_the_first_failure(
    tmp_path: Path,
) -> None:
    state = SimulatorState()
    runner, url = await serve(build_simulator_app(SimulatorConfig(), state))
    try:
        config = make_config(tmp_path, url)
        path = dead_letter_path(config.storage.path, "test")
        first = 1_600_000_000.0
        good = [letter(n, at=first) for n in range(5)]
        bad = letter(9, FailureKind.INVALID_IDENTITY, at=first, email="u9@invalid.test")
        other = letter(10, FailureKind.REFUSED, at=first)
        update = make_letter(
            "test",
            Endpoint.BULK_UPDATE,
            UserUpdate(email="u0@x.com", dataFields={"plan": "pro"}),
            Failure(FailureKind.USER_NOT_FOUND, "x"),
            1,
        )
        DeadLetterFile(path, fsync=False).write([*good, bad, other, update])
        (result,) = await replay(config, timeout=30, chosen=LetterFilter(since=first - 1))
    finally:
        await runner.cleanup()
    assert (result.resent, result.delivered, result.dead_again, result.left) == (8, 7, 1, 0)
    sent = {e["id"]: e for e in state.events}
    for n in range(5):
        # The event's own time and id, not the replay's.
        assert sent[f"ev-{n}"]["createdAt"] == 1_600_000_000 + n
    (again,) = [l for l in lines(path) if isinstance(l, DeadLetter)]
    assert again.item["id"] == "ev-9" and again.first_failed_at == first
    assert again.time > first
    assert [p.name for p in path.parent.iterdir()] == ["test.jsonl"]


async def test_a_replay_that_times_out_puts_back_the_unanswered_letters_as_they_were(
    tmp_path: Path,
) -> None:
    # Iterable answers after 5 s: a 0.5 s replay gets no answer for anything.
    state = SimulatorState()
    runner, url = await serve(build_simulator_app(SimulatorConfig(latency_ms=5000), state))
    try:
        config = make_config(tmp_path, url)
        path = dead_letter_path(config.storage.path, "test")
        originals = [letter(n) for n in range(4)]
        DeadLetterFile(path, fsync=False).write(originals)
        (result,) = await replay(config, timeout=0.5)
    finally:
        await runner.cleanup()
    assert result.resent == 4 and result.left == 4 and result.delivered == 0
    back = [l for l in lines(path) if isinstance(l, DeadLetter)]
    assert sorted(msgspec.json.encode(l) for l in back) == sorted(
        msgspec.json.encode(l) for l in originals
    )
    assert [p.name for p in path.parent.iterdir()] == ["test.jsonl"]

"""Journal frames: read back, torn tails, and resynchronising past damage of any kind."""

from __future__ import annotations

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from forwarder.store.framing import HEADER_SIZE, Damage, encode_frame, scan_frames


def frame(seq: int) -> bytes:
    return encode_frame(seq, f"record {seq}".encode() * (seq % 4 + 1))


def frames(n: int, first: int = 1) -> bytes:
    return b"".join(frame(seq) for seq in range(first, first + n))


def seqs(data: bytes, after_seq: int = 0) -> list[int]:
    return [seq for seq, _ in scan_frames(data, after_seq).records]


def test_scan_reads_back_every_record() -> None:
    scan = scan_frames(frames(5))
    assert scan.records[0] == (1, b"record 1" * 2)
    assert [seq for seq, _ in scan.records] == [1, 2, 3, 4, 5]
    assert scan.damage == [] and scan.good_bytes == len(frames(5))
    assert scan.tail(len(frames(5))) is None


@pytest.mark.parametrize("cut", [1, HEADER_SIZE - 1, HEADER_SIZE, HEADER_SIZE + 3])
def test_torn_tail_keeps_the_records_before_it(cut: int) -> None:
    data = frames(3) + encode_frame(4, b"the last one")[:cut]
    scan = scan_frames(data)
    assert [seq for seq, _ in scan.records] == [1, 2, 3]
    assert scan.good_bytes == len(frames(3))
    tail = scan.tail(len(data))
    assert tail is not None and "torn" in tail.reason
    assert (tail.start, tail.end) == (len(frames(3)), len(data))


def test_corrupt_tail_is_detected_by_checksum() -> None:
    last = bytearray(encode_frame(4, b"the last one"))
    last[-2] ^= 0x40
    data = frames(3) + bytes(last)
    scan = scan_frames(data)
    assert [seq for seq, _ in scan.records] == [1, 2, 3]
    assert scan.damage == [Damage(len(frames(3)), len(data), scan.damage[0].reason)]
    assert "checksum" in scan.damage[0].reason


def test_a_corrupt_frame_mid_file_costs_only_itself() -> None:
    before, bad, after = frames(10), bytearray(frame(11)), frames(10, first=12)
    bad[HEADER_SIZE + 3 : HEADER_SIZE + 7] = b"\xff\xff\xff\xff"
    data = before + bytes(bad) + after
    scan = scan_frames(data)
    assert [seq for seq, _ in scan.records] == list(range(1, 11)) + list(range(12, 22))
    assert scan.damage == [Damage(len(before), len(before) + len(bad), scan.damage[0].reason)]
    assert scan.good_bytes == len(data) and scan.tail(len(data)) is None


def test_a_frame_whose_seq_goes_back_is_skipped_like_damage() -> None:
    stale = frame(2)  # a valid frame from an older run, in the wrong place
    data = frames(5) + stale + frames(3, first=6)
    scan = scan_frames(data)
    assert [seq for seq, _ in scan.records] == [1, 2, 3, 4, 5, 6, 7, 8]
    assert len(scan.damage) == 1 and "goes back" in scan.damage[0].reason
    assert scan.damage[0].size == len(stale)


def test_after_seq_is_the_floor_a_later_segment_must_pass() -> None:
    assert seqs(frames(3, first=5), after_seq=4) == [5, 6, 7]
    assert seqs(frames(3, first=5), after_seq=6) == [7]


@settings(max_examples=300, deadline=None)
@given(
    st.integers(1, 12),
    st.lists(st.tuples(st.integers(0, 12), st.binary(min_size=1, max_size=300)), max_size=5),
)
def test_garbage_between_frames_never_loses_a_frame_after_it(
    count: int, insertions: list[tuple[int, bytes]]
) -> None:
    garbage_at: dict[int, bytes] = {}
    for position, noise in insertions:
        garbage_at[min(position, count)] = garbage_at.get(min(position, count), b"") + noise
    data = b""
    expected_damage: list[tuple[int, int]] = []
    for index in range(count + 1):
        if index in garbage_at:
            expected_damage.append((len(data), len(data) + len(garbage_at[index])))
            data += garbage_at[index]
        if index < count:
            data += frame(index + 1)
    scan = scan_frames(data)
    assert [seq for seq, _ in scan.records] == list(range(1, count + 1))
    assert [(d.start, d.end) for d in scan.damage] == expected_damage


@settings(max_examples=300, deadline=None)
@given(st.integers(1, 20), st.data())
def test_flipped_bytes_in_one_frame_cost_only_that_frame(count: int, data: st.DataObject) -> None:
    damaged = data.draw(st.integers(1, count))
    raw = bytearray(frames(count))
    start = len(frames(damaged - 1))
    size = len(frame(damaged))
    at = data.draw(st.integers(start, start + size - 4))
    mask = data.draw(st.binary(min_size=4, max_size=4).filter(lambda b: any(b)))
    for k in range(4):
        raw[at + k] ^= mask[k]
    scan = scan_frames(bytes(raw))
    assert [seq for seq, _ in scan.records] == [s for s in range(1, count + 1) if s != damaged]
    assert [(d.start, d.end) for d in scan.damage] == [(start, start + size)]


@settings(max_examples=200, deadline=None)
@given(st.binary(max_size=2000), st.integers(0, 10))
def test_scan_never_raises_on_garbage(noise: bytes, keep: int) -> None:
    scan = scan_frames(frames(keep) + noise)
    assert [seq for seq, _ in scan.records][:keep] == list(range(1, keep + 1))
    assert sum(d.size for d in scan.damage) + sum(len(frame(s)) for s, _ in scan.records) == len(
        frames(keep) + noise
    )

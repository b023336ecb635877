"""Journal frames: read back, torn and corrupt tails, garbage never raises."""

from __future__ import annotations

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from forwarder.store.framing import HEADER_SIZE, encode_frame, scan_frames


def frames(n: int) -> bytes:
    return b"".join(encode_frame(seq, f"record {seq}".encode()) for seq in range(1, n + 1))


def test_scan_reads_back_every_record() -> None:
    scan = scan_frames(frames(5))
    assert [seq for seq, _ in scan.records] == [1, 2, 3, 4, 5]
    assert scan.problem is None


@pytest.mark.parametrize("cut", [1, HEADER_SIZE - 1, HEADER_SIZE, HEADER_SIZE + 3])
def test_torn_tail_keeps_the_records_before_it(cut: int) -> None:
    data = frames(3) + encode_frame(4, b"the last one")[:cut]
    scan = scan_frames(data)
    assert [seq for seq, _ in scan.records] == [1, 2, 3]
    assert scan.good_bytes == len(frames(3))
    assert scan.problem is not None and "torn" in scan.problem


def test_corrupt_tail_is_detected_by_checksum() -> None:
    last = bytearray(encode_frame(4, b"the last one"))
    last[-2] ^= 0x40
    scan = scan_frames(frames(3) + bytes(last))
    assert [seq for seq, _ in scan.records] == [1, 2, 3]
    assert scan.problem is not None and "checksum" in scan.problem


@settings(max_examples=200, deadline=None)
@given(st.binary(max_size=2000), st.integers(0, 10))
def test_scan_never_raises_on_garbage(noise: bytes, keep: int) -> None:
    scan = scan_frames(frames(keep) + noise)
    assert [seq for seq, _ in scan.records][:keep] == list(range(1, keep + 1))

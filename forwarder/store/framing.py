"""Journal frames (pure): [length u32][crc32 u32][seq u64][payload], and scanning them back.

Frames are self-delimiting, so a torn write or flipped bits cost only the frames they
touch: the scanner reports the damaged byte range and resynchronises on the next valid
frame. The CRC covers the sequence number too, so a frame copied to the wrong place, or a
stale one from an older run, does not pass.
"""

from __future__ import annotations

import struct
import zlib
from dataclasses import dataclass

_HEADER = struct.Struct("<IIQ")
HEADER_SIZE = _HEADER.size
MAX_RECORD_BYTES = 256 * 1024 * 1024


def _crc(seq: int, payload: bytes | memoryview) -> int:
    return zlib.crc32(payload, zlib.crc32(seq.to_bytes(8, "little")))


def encode_frame(seq: int, payload: bytes) -> bytes:
    return _HEADER.pack(len(payload), _crc(seq, payload), seq) + payload


@dataclass(frozen=True, slots=True)
class Damage:
    """Bytes [start, end) hold no valid frame; `reason` is why the frame at `start` failed."""

    start: int
    end: int
    reason: str

    @property
    def size(self) -> int:
        return self.end - self.start


@dataclass(frozen=True, slots=True)
class ScanResult:
    records: list[tuple[int, bytes]]
    damage: list[Damage]  # in file order; the last one may reach the end of the data
    good_bytes: int  # where the last valid frame ends: the length to cut a damaged tail to

    def tail(self, total: int) -> Damage | None:
        """The damage that runs to the end of the data (a torn last write), if any."""
        if self.damage and self.damage[-1].end == total:
            return self.damage[-1]
        return None


def _frame_end(view: memoryview, offset: int, total: int, after_seq: int) -> int:
    """The end of the valid frame at `offset` with a seq above `after_seq`, or -1.

    Cheap checks first: the resynchronising search calls this at every byte.
    """
    if total - offset < HEADER_SIZE:
        return -1
    length, crc, seq = _HEADER.unpack_from(view, offset)
    end: int = offset + HEADER_SIZE + length
    if length > MAX_RECORD_BYTES or end > total or seq <= after_seq:
        return -1
    if _crc(seq, view[offset + HEADER_SIZE : end]) != crc:
        return -1
    return end


def _why_invalid(view: memoryview, offset: int, total: int, after_seq: int) -> str:
    if total - offset < HEADER_SIZE:
        return f"torn header at byte {offset}"
    length, _, seq = _HEADER.unpack_from(view, offset)
    if length > MAX_RECORD_BYTES:
        return f"impossible length {length} at byte {offset}"
    if offset + HEADER_SIZE + length > total:
        return f"torn record (seq {seq}) at byte {offset}"
    if seq <= after_seq:
        return f"sequence goes back ({seq} after {after_seq}) at byte {offset}"
    return f"checksum mismatch at byte {offset}"


def scan_frames(data: bytes | memoryview, after_seq: int = 0) -> ScanResult:
    """Every valid frame with increasing seqs above `after_seq`, skipping damaged ranges.

    After a bad frame the scan searches forward byte by byte for the next header whose
    length fits, whose CRC matches and whose seq is above the last good one.
    """
    view = memoryview(data)
    total = len(view)
    records: list[tuple[int, bytes]] = []
    damage: list[Damage] = []
    offset = good_bytes = 0
    last_seq = after_seq
    while offset < total:
        end = _frame_end(view, offset, total, last_seq)
        if end >= 0:
            seq = _HEADER.unpack_from(view, offset)[2]
            records.append((seq, bytes(view[offset + HEADER_SIZE : end])))
            last_seq, offset, good_bytes = seq, end, end
            continue
        reason = _why_invalid(view, offset, total, last_seq)
        resume = offset + 1
        while resume < total and _frame_end(view, resume, total, last_seq) < 0:
            resume += 1
        damage.append(Damage(offset, resume, reason))
        offset = resume
    return ScanResult(records, damage, good_bytes)

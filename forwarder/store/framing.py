"""Journal frames (pure): [length u32][crc32 u32][seq u64][payload], and scanning them back.

A torn write or a flipped bit is detected on recovery, reported and cut off, and every
record before it is kept. The CRC covers the sequence number too, so a frame copied to the
wrong place does not pass.
"""

from __future__ import annotations

import struct
import zlib
from dataclasses import dataclass

_HEADER = struct.Struct("<IIQ")
HEADER_SIZE = _HEADER.size
MAX_RECORD_BYTES = 256 * 1024 * 1024


def encode_frame(seq: int, payload: bytes) -> bytes:
    crc = zlib.crc32(payload, zlib.crc32(seq.to_bytes(8, "little")))
    return _HEADER.pack(len(payload), crc, seq) + payload


@dataclass(frozen=True, slots=True)
class ScanResult:
    records: list[tuple[int, bytes]]
    good_bytes: int  # bytes of whole, valid records from the start
    problem: str | None  # why the scan stopped early, if it did


def scan_frames(data: bytes | memoryview) -> ScanResult:
    """Every valid record from the start; stops at the first torn or corrupt one."""
    view = memoryview(data)
    records: list[tuple[int, bytes]] = []
    offset = 0
    total = len(view)
    last_seq = -1
    while offset < total:
        if total - offset < HEADER_SIZE:
            return ScanResult(records, offset, f"torn header at byte {offset}")
        length, crc, seq = _HEADER.unpack_from(view, offset)
        end = offset + HEADER_SIZE + length
        if length > MAX_RECORD_BYTES:
            return ScanResult(records, offset, f"impossible length {length} at byte {offset}")
        if end > total:
            return ScanResult(records, offset, f"torn record (seq {seq}) at byte {offset}")
        payload = bytes(view[offset + HEADER_SIZE : end])
        if zlib.crc32(payload, zlib.crc32(seq.to_bytes(8, "little"))) != crc:
            return ScanResult(records, offset, f"checksum mismatch at byte {offset}")
        if seq <= last_seq:
            return ScanResult(records, offset, f"sequence goes back ({seq} after {last_seq})")
        records.append((seq, payload))
        last_seq = seq
        offset = end
    return ScanResult(records, offset, None)

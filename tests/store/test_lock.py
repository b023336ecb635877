"""The storage lock: one holder at a time, the refusal names the path and the holder."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from forwarder.errors import StorageLocked
from forwarder.store.lock import LOCK_FILE, StorageLock


def test_a_second_lock_on_the_path_is_refused_naming_path_and_pid(tmp_path: Path) -> None:
    storage = tmp_path / "var"
    held = StorageLock.acquire(storage)  # creates the directory
    assert (storage / LOCK_FILE).read_text() == f"{os.getpid()}\n"
    # A second open file description conflicts even within one process, as between two.
    with pytest.raises(StorageLocked) as refused:
        StorageLock.acquire(storage)
    assert refused.value.pid == os.getpid()
    assert str(storage.resolve()) in str(refused.value) and f"PID {os.getpid()}" in str(
        refused.value
    )
    held.release()
    again = StorageLock.acquire(storage)
    again.release()
    again.release()  # twice is harmless

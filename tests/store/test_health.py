"""Storage health: a failure turns it off, a probe write turns it on; refusal needs a
failed probe too."""

from __future__ import annotations

import errno
from pathlib import Path

from forwarder.errors import StorageUnavailable
from forwarder.store.health import PROBE_FILE, StorageHealth
from tests.harness import eventually


def disk_full() -> StorageUnavailable:
    error = StorageUnavailable("journal write failed")
    error.__cause__ = OSError(errno.ENOSPC, "No space left on device")
    return error


async def test_a_one_off_failure_is_cleared_by_the_first_probe(tmp_path: Path) -> None:
    health = StorageHealth(tmp_path, probe_seconds=0.05)
    health.failed(disk_full(), "journal")
    assert health.fault == "journal: ENOSPC (No space left on device)"
    assert not health.refusing  # not until a probe fails as well
    await eventually(lambda: health.fault is None, timeout=5)
    assert health.faults == 1 and not (tmp_path / PROBE_FILE).exists()
    await health.close()


async def test_ingest_is_refused_while_the_probe_fails_and_resumes_after(tmp_path: Path) -> None:
    missing = tmp_path / "gone"  # the probe's open fails here, as on a dead disk
    health = StorageHealth(missing, probe_seconds=0.05)
    health.failed(OSError(errno.EIO, "Input/output error"), "checkpoint")
    await eventually(lambda: health.refusing, timeout=5)
    assert health.fault == "checkpoint: EIO (Input/output error)"
    missing.mkdir()
    await eventually(lambda: health.fault is None, timeout=5)
    assert not health.refusing
    await health.close()


async def test_nothing_written_means_nothing_fails() -> None:
    health = StorageHealth(None)
    health.failed(disk_full(), "journal")
    assert health.fault is None and not health.refusing
    await health.close()

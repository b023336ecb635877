"""Journal items of a sync no longer configured, written as that sync's dead letters."""

from __future__ import annotations

import logging

from forwarder.errors import Failure, FailureKind
from forwarder.store.dead_letters import DeadLetterFile, make_letter
from forwarder.store.records import RecordItem, decode_item

log = logging.getLogger("forwarder.daemon")

SYNC_REMOVED = Failure(FailureKind.SYNC_REMOVED, "sync no longer configured (or disabled)")


def dead_letter_orphans(
    sync: str, entries: list[tuple[int, RecordItem]], dead_letters: DeadLetterFile
) -> bool:
    """Write the items (each with the seq of its record) as dead letters of `sync`; True
    when written. The caller acknowledges them then; if the disk refuses, the journal
    keeps them for the next start. One log line either way."""
    letters = []
    for _, entry in entries:
        endpoint, item = decode_item(entry)
        letters.append(make_letter(sync, endpoint, item, SYNC_REMOVED, 0))
    try:
        dead_letters.write(letters)
    except OSError as error:
        log.error(
            "journal names sync %r, which is not configured: cannot write its %d item(s) "
            "as dead letters (%s); the journal keeps them for the next start",
            sync,
            len(letters),
            error,
            extra={"sync": sync},
        )
        return False
    log.warning(
        "journal names sync %r, which is not configured: %d item(s) written as dead "
        "letters to %s (forwarder dead-letters shows them)",
        sync,
        len(letters),
        dead_letters.path,
        extra={"sync": sync},
    )
    return True

"""What can go wrong: one exception tree, one enum of failure kinds, and what errors may show.

A failure is named once, where it is found, as a `FailureKind`; the same value is the
metric label and the `kind` of a dead-letter record, so nothing parses a message again.
"""

from __future__ import annotations

import enum
import os
import re

import msgspec


class FailureKind(enum.Enum):
    """Why a request was refused at ingest, or why an item became a dead letter."""

    # Ingest refusals: the label of forwarder_requests_rejected_total.
    INVALID_API_KEY = "invalid_api_key"
    MISSING_API_KEY = "missing_api_key"
    MISSING_EVENTS = "missing_events"
    MISSING_IDENTIFICATION = "missing_identification"
    INVALID_EVENTS = "invalid_events"
    CONTENT_TYPE = "content_type"
    MALFORMED = "malformed"
    TOO_LARGE = "too_large"
    THROTTLED = "throttled"
    # The journal or profile store cannot write (disk full, read-only, I/O error): 503.
    STORAGE_UNAVAILABLE = "storage_unavailable"

    # Dead-letter reasons: the label of forwarder_sync_dead_letters_total.
    ITEM_TOO_LARGE = "item_too_large"
    INVALID_IDENTITY = "invalid_identity"
    INVALID_DATA = "invalid_data"
    FORGOTTEN_USER = "forgotten_user"
    IDENTITY_CONFLICT = "identity_conflict"
    EVENT_NAME_DISALLOWED = "event_name_disallowed"
    USER_NOT_FOUND = "user_not_found"
    OTHER_FAILURE_LIST = "other_failure_list"
    BAD_REQUEST = "bad_request"
    # 400 UniqueFieldsLimitExceeded: the project holds as many fields as Iterable allows;
    # about the project, not the item, so never bisected (an operator raises the limit,
    # then replays).
    UNIQUE_FIELDS_LIMIT = "unique_fields_limit"
    REFUSED = "refused"
    RETRIES_EXHAUSTED = "retries_exhausted"
    REPLAY_TIMEOUT = "replay_timeout"
    # The journal held the item for a sync a config reload (or an edit before a restart)
    # removed or disabled: kept as that sync's dead letter, for a replay if it comes back.
    SYNC_REMOVED = "sync_removed"


class Failure(msgspec.Struct, frozen=True):
    """A failure kind with its one-line detail ("invalidEmails", "400 BadJsonBody: ...")."""

    kind: FailureKind
    detail: str


class ForwarderError(Exception):
    """The root of every error forwarder raises on purpose."""


class ConfigError(ForwarderError):
    """A config that can't be used; the message starts with the key path at fault."""

    def __init__(self, path: str, message: str) -> None:
        super().__init__(f"{path}: {message}" if path else message)
        self.path = path
        self.message = message


class LogClosed(ForwarderError):
    """An append to a durable log that is closing or closed."""


class StorageUnavailable(ForwarderError):
    """A request could not be made durable (or builds on one that could not): the
    client is answered 503 and retries; nothing of the request is kept."""


class IngestThrottled(ForwarderError):
    """The sink could not take a request now but will soon (cluster mode: JetStream refused,
    timed out or can't be reached): answered 429, every event throttled, so the SDKs
    send it again after a while; nothing of it counts as accepted."""


class StorageLocked(ForwarderError):
    """Another process holds the lock on storage.path: a second daemon must not run there."""

    def __init__(self, path: str, pid: int | None) -> None:
        holder = f"PID {pid}" if pid is not None else "another process (PID not yet written)"
        super().__init__(f"storage.path {path} is locked by {holder}: another forwarder runs there")
        self.path = path
        self.pid = pid


class ListenError(ForwarderError):
    """A listen address the daemon cannot bind (in use, no permission, no such address)."""

    def __init__(self, address: str, error: OSError) -> None:
        # os.strerror for errno's plain words (uvloop's text quotes the address tuple);
        # a lookup failure (gaierror) has a negative code and its own words.
        code = error.errno or 0
        why = os.strerror(code) if code > 0 else (error.strerror or str(error))
        super().__init__(f"cannot listen on {address}: {why[:1].lower()}{why[1:]}")
        self.address = address


# --- what an error may show -----------------------------------------------------------

# Iterable API keys are 32 hex characters; an error message that echoes one must not
# carry it into logs or dead letters.
_KEY_LIKE = re.compile(r"(?<![0-9A-Za-z])[0-9a-fA-F]{32}(?![0-9A-Za-z])")
MAX_MESSAGE = 300


def mask(secret: str) -> str:
    """A key as logs and errors may show it: enough to tell keys apart, not to use one."""
    if len(secret) <= 8:
        return "****"
    return f"{secret[:4]}…{secret[-2:]}"


def scrub(text: str) -> str:
    """Foreign text made safe for one log line: whitespace folded, key-like runs redacted."""
    text = _KEY_LIKE.sub("<redacted>", " ".join(text.split()))
    return text if len(text) <= MAX_MESSAGE else text[:MAX_MESSAGE] + "..."

"""Reading Iterable's answer to one request into a fate per item (pure, no I/O)."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Literal

import msgspec

from forwarder.deliver.answers import (
    BulkResponse,
    ErrorResponse,
    decode_json,
    describe,
    failure_lists,
    header_value,
    identity_kind,
    parse_retry_after,
    read_bulk_response,
    read_error,
    status_text,
)
from forwarder.deliver.named_items import named_indexes, same_type_siblings
from forwarder.errors import Failure, FailureKind, scrub
from forwarder.iterable import Endpoint, Item, TrackEvent, UpdateEmail


class Outcome(msgspec.Struct, kw_only=True):
    """The fate of every item of one bulk request, by index into the batch.

    Unless `split` or `auth_failure` is set, every index appears in exactly one of
    delivered, dead, retry, not_found and resend. With `split` the sender bisects the
    whole batch (within its bisect budget);
    with `auth_failure` no item has a fate: the sync pauses and keeps them queued.
    `transient` marks a request that failed as a whole for now (no answer, 408/429/5xx,
    a 2xx that is not Iterable's answer): every item is in retry, and a run of these is
    an outage, which no attempt count ends.
    """

    delivered: list[int] = []
    dead: list[tuple[int, Failure]] = []
    retry: list[int] = []
    # Iterable does not see the item's user (yet): retried on the not-found schedule.
    not_found: list[int] = []
    resend: list[int] = []
    split: bool = False
    retry_after: float | None = None
    auth_failure: str | None = None
    transient: bool = False
    # Values in a 200's failure lists that name no item of the request: reported, never
    # held against the items that were sent.
    foreign: int = 0
    # One line on the whole answer, for logs and for the dead letters of retries that
    # run out (the sender's "HTTP 200" says nothing about why an item is retried).
    summary: str = ""


Fate = Literal["dead", "not_found", "retry", "ignore"]

# Why each failure list is, or is not, worth retrying:
# - invalid*, invalidData*: the value or the data is malformed; resending the same bytes
#   gets the same answer.
# - forgotten*: the user was forgotten under GDPR; Iterable refuses their data until
#   someone unforgets them, which is an operator's act (dead letters can be replayed).
# - conflict*: another profile already holds that email or userId; only a person can
#   resolve it.
# - disallowedEventNames: the project blocks that event name: configuration on
#   Iterable's side, not a passing state.
# - notFound* on trackBulk: the user is not visible yet. Bulk endpoints are processed
#   asynchronously, and Iterable asks for up to 60 s after a user is created or updated
#   before calls that depend on it, so these are retried on their own schedule
#   (not_found_retry_seconds, 2 min by default) before they become dead letters, "user
#   not found". trackBulk's deprecated top-level invalidUserIds is "userId values that
#   were not found" (answers.failure_lists reads it as notFoundUserIds).
# - notFound* on bulkUpdate: the spec says these lists are "for subscribe/unsubscribe
#   only"; a bulkUpdate creates users, so a miss there means the identity cannot be
#   resolved (a userId alone in an email-based project without preferUserId): permanent.
PERMANENT_LISTS = frozenset(
    {
        "invalidEmails",
        "invalidUserIds",
        "forgottenEmails",
        "forgottenUserIds",
        "conflictEmails",
        "conflictUserIds",
        "invalidDataEmails",
        "invalidDataUserIds",
        "disallowedEventNames",
    }
)
NOT_FOUND_LISTS = frozenset({"notFoundEmails", "notFoundUserIds"})
_PERMANENT_WORDS = ("invalid", "forgotten", "conflict", "disallowed")


def classify_list(name: str, endpoint: Endpoint) -> Fate:
    """What a failure list means for the items it names; unknown names by their words.

    An unknown list that says nothing about its cause ("failedEmails" in Iterable's own
    client, "validEmailFailures" on another bulk endpoint, where it means an internal
    error) is retried: a bounded number of resends costs little, and a dead letter for an
    item Iterable would have taken on the next try is the worse mistake.
    """
    if name in PERMANENT_LISTS:
        return "dead"
    if name in NOT_FOUND_LISTS or "notfound" in name.lower():
        return "not_found" if endpoint is Endpoint.TRACK_BULK else "dead"
    if name.startswith("noOp"):
        return "ignore"  # peers' mocks: the update changed nothing, Iterable took it
    lowered = name.lower()
    if any(word in lowered for word in _PERMANENT_WORDS):
        return "dead"
    return "retry"


# Failure kinds by the words of a list's name, most specific first; known names and
# unknown ones that say what they hold ("blockedInvalidUserIds") read the same way.
_KIND_WORDS = (
    ("forgotten", FailureKind.FORGOTTEN_USER),
    ("conflict", FailureKind.IDENTITY_CONFLICT),
    ("disallowed", FailureKind.EVENT_NAME_DISALLOWED),
    ("invaliddata", FailureKind.INVALID_DATA),
    ("invalid", FailureKind.INVALID_IDENTITY),
    ("notfound", FailureKind.USER_NOT_FOUND),
)


def list_failure(name: str) -> Failure:
    """The dead-letter failure of an item a failure list names."""
    lowered = name.lower()
    for word, kind in _KIND_WORDS:
        if word in lowered:
            return Failure(kind, name)
    return Failure(FailureKind.OTHER_FAILURE_LIST, name)


# --- the entry point ------------------------------------------------------------------


def read_outcome(
    endpoint: Endpoint,
    status: int | None,
    headers: Mapping[str, str],
    body: bytes,
    items: Sequence[Item],
    *,
    now: float | None = None,
) -> Outcome:
    """Iterable's answer to one bulk request of `items`, as a fate per item.

    `status` None means no answer (timeout, connection error). `now` (Unix seconds) is
    for tests of an HTTP-date Retry-After.
    """
    count = len(items)
    everything = list(range(count))
    if status is None or status == 408 or status == 429 or status >= 500:
        # The request itself failed or was refused for now: Iterable took nothing.
        why = (
            "no answer (timeout or connection error)" if status is None else describe(status, body)
        )
        return Outcome(
            retry=everything,
            retry_after=parse_retry_after(headers, now),
            transient=True,
            summary=why,
        )
    if endpoint.single and (200 <= status < 300 or status in (400, 404, 409)):
        return _read_single(status, body)
    if 200 <= status < 300:
        return _read_success(endpoint, status, headers, body, items)
    if 300 <= status < 400:
        # Iterable's API never redirects; a redirect comes from a wrong base_url (http for
        # https, a website, a proxy's login page). Following it would turn the POST into a
        # GET whose 200 says nothing about the items, so the sync pauses, keeping them.
        location = header_value(headers, "Location")
        why = f"{status} redirect" + (f" to {scrub(location)}" if location else "")
        why += " (check base_url: Iterable's API does not redirect)"
        return Outcome(auth_failure=why, summary=why)
    if status in (401, 403):
        # A bad, disabled or under-privileged key: configuration, not data.
        why = describe(status, body)
        return Outcome(auth_failure=why, summary=why)
    if status in (404, 405):
        # The bulk endpoints exist on every Iterable project: a 404/405 means a wrong
        # base_url or proxy, which is configuration too. Pausing keeps the data; burning
        # every item into dead letters on a typo would not.
        why = describe(status, body) + " (check base_url / region)"
        return Outcome(auth_failure=why, summary=why)
    if status in (400, 409):
        return _read_rejection(endpoint, status, body, items)
    if status == 413:
        # Too large as a whole: halves fit; a single item that is too large never will.
        why = describe(status, body)
        if count == 1:
            return Outcome(dead=[(0, Failure(FailureKind.ITEM_TOO_LARGE, why))], summary=why)
        return Outcome(split=True, summary=why)
    # Any other answer (410, 422, ...) is about the request, not a passing state:
    # dead letters keep the items for a replay once the cause is fixed.
    why = describe(status, body)
    refused = Failure(FailureKind.REFUSED, why)
    return Outcome(dead=[(i, refused) for i in everything], summary=why)


# --- 400 / 409: the whole request refused ---------------------------------------------

# Iterable's error codes (Iterable/api-client, src/types/common.ts) by what they are about.
# About one item: the request is refused for it, so the others go again without it.
ITEM_CODES = frozenset(
    {
        "BadJsonBody",
        "BadParams",
        "RequestFieldsTypesMismatched",
        "InvalidEmailAddressError",
        "InvalidUserIdError",
        "EmailAlreadyExists",
        "UserIdAlreadyExists",
        "ExternalKeyConflict",
        "ForgottenUserError",
        "UnknownEmailError",
        "UnknownUserIdError",
        "NotFound",
    }
)
# About the project: every item of every request gets the same answer, so halving the
# batch finds nothing; the items are dead letters (replayable once the cause is fixed).
PROJECT_CODES = {"UniqueFieldsLimitExceeded": FailureKind.UNIQUE_FIELDS_LIMIT}
# About the key (its permissions): configuration, so the sync pauses as for a 401.
KEY_CODES = frozenset(
    {
        "BadApiKey",
        "BadAuthorizationHeader",
        "Unauthorized",
        "Forbidden",
        "ForbiddenParamsError",
        "InvalidJwtPayload",
        "JwtUserIdentifiersMismatched",
    }
)
# About Iterable's state for now: retried like a 5xx.
PASSING_CODES = frozenset({"RateLimitExceeded", "DatabaseError", "GenericError", "QueueEmailError"})
# updateEmail's answers about its one item, by code.
_SINGLE_DEAD = {
    "EmailAlreadyExists": FailureKind.IDENTITY_CONFLICT,
    "UserIdAlreadyExists": FailureKind.IDENTITY_CONFLICT,
    "ExternalKeyConflict": FailureKind.IDENTITY_CONFLICT,
    "ForgottenUserError": FailureKind.FORGOTTEN_USER,
    "InvalidEmailAddressError": FailureKind.INVALID_IDENTITY,
    "InvalidUserIdError": FailureKind.INVALID_IDENTITY,
}
_SINGLE_NOT_FOUND = frozenset({"UnknownEmailError", "UnknownUserIdError", "NotFound"})


def _request_level(status: int, error: ErrorResponse, why: str, count: int) -> Outcome | None:
    """The outcome of an error whose code is about the project, the key or a passing
    state (never bisected), or None when it may be about an item."""
    code = error.code or ""
    kind = PROJECT_CODES.get(code)
    if kind is not None:
        failure = Failure(kind, why)
        return Outcome(dead=[(i, failure) for i in range(count)], summary=why)
    if code in KEY_CODES:
        return Outcome(auth_failure=why, summary=why)
    if code in PASSING_CODES:
        return Outcome(retry=list(range(count)), transient=True, summary=why)
    return None


def _read_single(status: int, body: bytes) -> Outcome:
    """users/updateEmail's answer (IterableApiResponse) about its one item."""
    error = read_error(body)
    why = describe(status, body, error)
    code = error.code or ""
    if 200 <= status < 300:
        if not isinstance(decode_json(body), dict):
            # As for the bulk endpoints: a 2xx that is not Iterable's answer proves nothing.
            return Outcome(retry=[0], transient=True, summary=f"{why} without Iterable's JSON")
        if code in ("", "Success"):
            return Outcome(delivered=[0], summary=why)
    if code in _SINGLE_NOT_FOUND:
        return Outcome(not_found=[0], summary=why)
    kind = _SINGLE_DEAD.get(code)
    if kind is not None:
        return Outcome(dead=[(0, Failure(kind, why))], summary=why)
    if status == 404 and not code:
        # No Iterable code: a wrong base_url or proxy, as for the bulk endpoints.
        why += " (check base_url / region)"
        return Outcome(auth_failure=why, summary=why)
    level = _request_level(status, error, why, 1)
    if level is not None:
        return level
    kind = FailureKind.IDENTITY_CONFLICT if status == 409 else FailureKind.BAD_REQUEST
    return Outcome(dead=[(0, Failure(kind, why))], summary=why)


def _read_rejection(endpoint: Endpoint, status: int, body: bytes, items: Sequence[Item]) -> Outcome:
    """A 400 (BadJsonBody, RequestFieldsTypesMismatched, ...) or 409 (identity conflict).

    Iterable refuses the WHOLE bulk request for one bad item. When the error names items
    (`params` like {"obj.events[1].createdAt": ...}), only those are dead and the others
    go again at once; otherwise the sender bisects to find the bad one, but only when the
    code may be about one item: a code about the project (UniqueFieldsLimitExceeded) or
    the key never bisects, as every half would get the same answer.
    """
    error = read_error(body)
    why = describe(status, body, error)
    count = len(items)
    level = _request_level(status, error, why, count)
    if level is not None:
        return level
    failure = Failure(FailureKind.BAD_REQUEST, why)
    named = named_indexes(error, endpoint, count)
    if named:
        # Iterable names one item per answer; its siblings with the same field type
        # would each cost another round trip to be named in turn.
        bad = set(named) | same_type_siblings(error, endpoint, items)
        named = sorted(bad)
        resend = [i for i in range(count) if i not in bad]
        return Outcome(dead=[(i, failure) for i in named], resend=resend, summary=why)
    if count == 1:
        return Outcome(dead=[(0, failure)], summary=why)
    return Outcome(split=True, summary=why)


# --- 200: per-item failures -----------------------------------------------------------


def _read_success(
    endpoint: Endpoint, status: int, headers: Mapping[str, str], body: bytes, items: Sequence[Item]
) -> Outcome:
    count = len(items)
    raw = decode_json(body)
    if not isinstance(raw, dict):
        # Iterable answers both bulk endpoints with a JSON object; a 2xx without one (an
        # HTML page, a cut-off body, nothing) came from something else on the way, a
        # proxy, a captive portal, a load balancer, and proves nothing about the items.
        # They are retried like a 5xx (resends are idempotent), never counted delivered.
        kind = header_value(headers, "Content-Type") or "no content type"
        excerpt = status_text(body)
        summary = f"{status} without Iterable's JSON answer ({scrub(kind)}"
        summary += f"; body: {excerpt})" if excerpt else "; empty body)"
        return Outcome(retry=list(range(count)), transient=True, summary=summary)
    response = read_bulk_response(raw)
    lists = failure_lists(response, raw, track=endpoint is Endpoint.TRACK_BULK)
    fates, foreign = _match(endpoint, lists, items)
    failed = sum(1 for fate, _ in fates.values() if fate != "ignore")
    ignored = len(fates) - failed
    # Values that name no item of the request (another request's users, a normalisation
    # we cannot reproduce) inflate Iterable's counts but say nothing about these items:
    # they are reported (summary, log, last_error) and taken off the shortfall, so they
    # never send the whole batch round again (200 updates stored 8 times, then dead).
    foreign_failures = sum(
        n for name, n in foreign.items() if classify_list(name, endpoint) != "ignore"
    )

    # Counts are Iterable's own tally; when they report more failures than the lists
    # name, foreign values aside (a list we cannot match), we cannot tell which
    # unnamed items failed, so those are retried (resends are idempotent: an event id
    # updates, a user update rewrites the same fields) rather than counted as delivered.
    shortfalls = []
    if response.failCount is not None:
        shortfalls.append(response.failCount - failed)
    if response.successCount is not None:
        shortfalls.append(count - response.successCount - failed - ignored)
    unexplained = max(shortfalls, default=0) - foreign_failures
    no_counts = response.successCount is None and response.failCount is None
    error_code = response.code not in (None, "", "Success")
    if no_counts and not lists and error_code:
        # A 2xx that calls itself an error and reports nothing: do not trust it as taken.
        summary = _success_summary(response, fates, foreign, count, error_code)
        return Outcome(retry=list(range(count)), transient=True, summary=summary)

    summary = _success_summary(response, fates, foreign, unexplained, error_code)
    foreign_count = sum(foreign.values())
    if not fates and unexplained <= 0:
        # The usual answer.
        return Outcome(delivered=list(range(count)), foreign=foreign_count, summary=summary)
    # A list naming an item wins over counts that say everything succeeded: a dead letter
    # can be replayed, an item wrongly counted as delivered is lost.
    outcome = Outcome(foreign=foreign_count, summary=summary)
    unnamed = outcome.retry if unexplained > 0 else outcome.delivered
    for index in range(count):
        fate = fates.get(index)
        if fate is None:
            unnamed.append(index)
        elif fate[0] == "dead":
            outcome.dead.append((index, list_failure(fate[1])))
        elif fate[0] == "retry":
            outcome.retry.append(index)
        elif fate[0] == "not_found":
            outcome.not_found.append(index)
        else:
            outcome.delivered.append(index)
    return outcome


def _match(
    endpoint: Endpoint, lists: Mapping[str, list[str]], items: Sequence[Item]
) -> tuple[dict[int, tuple[Fate, str]], dict[str, int]]:
    """Index -> (fate, list name) for every item a failure list names, and by list name
    how many of its values name no item of the request.

    Emails match case-insensitively and trimmed (Iterable lowercases them), userIds and
    event names exactly (a trimmed userId is tried when the exact one is not found). A
    permanent failure wins over a retryable one, and both over a no-op.
    """
    foreign: dict[str, int] = {}
    if not lists:
        return {}, foreign
    by_email: dict[str, list[int]] = {}
    by_user_id: dict[str, list[int]] = {}
    by_event_name: dict[str, list[int]] = {}
    for index, item in enumerate(items):
        if isinstance(item, UpdateEmail):
            continue  # answered on its own (_read_single), never in failure lists
        if item.email:
            by_email.setdefault(item.email.strip().lower(), []).append(index)
        if item.userId:
            by_user_id.setdefault(item.userId, []).append(index)
        if isinstance(item, TrackEvent):
            by_event_name.setdefault(item.eventName, []).append(index)
    stripped_user_ids: dict[str, list[int]] | None = None

    fates: dict[int, tuple[Fate, str]] = {}
    rank: dict[Fate, int] = {"dead": 3, "not_found": 2, "retry": 1, "ignore": 0}
    for name, values in lists.items():
        fate = classify_list(name, endpoint)
        kind = identity_kind(name)
        for value in values:
            if kind == "email":
                hits = by_email.get(value.strip().lower(), [])
            elif kind == "userId":
                hits = by_user_id.get(value, [])
                if not hits:
                    if stripped_user_ids is None:
                        stripped_user_ids = {}
                        for key, indexes in by_user_id.items():
                            stripped_user_ids.setdefault(key.strip(), []).extend(indexes)
                    hits = stripped_user_ids.get(value.strip(), [])
            elif kind == "eventName":
                hits = by_event_name.get(value, [])
            else:
                hits = []
            if not hits:
                foreign[name] = foreign.get(name, 0) + 1
            for index in hits:
                current = fates.get(index)
                if current is None or rank[fate] > rank[current[0]]:
                    fates[index] = (fate, name)
    return fates, foreign


def _success_summary(
    response: BulkResponse,
    fates: Mapping[int, tuple[Fate, str]],
    foreign: Mapping[str, int],
    unexplained: int,
    error_code: bool,
) -> str:
    parts = []
    if response.successCount is not None or response.failCount is not None:
        parts.append(f"successCount {response.successCount}, failCount {response.failCount}")
    by_list: dict[str, int] = {}
    for _, name in fates.values():
        by_list[name] = by_list.get(name, 0) + 1
    parts.extend(f"{n} in {name}" for name, n in sorted(by_list.items()))
    if foreign:
        named = ", ".join(f"{name} {n}" for name, n in sorted(foreign.items()))
        parts.append(
            f"{sum(foreign.values())} listed value(s) not in the request ({named}): ignored"
        )
    if unexplained > 0:
        parts.append(f"{unexplained} failure(s) not named by any list: unnamed items retried")
    if error_code:
        parts.append(f"code {response.code}: {scrub(response.msg or '')}".rstrip(": "))
    return "200: " + ("; ".join(parts) if parts else "all delivered")

"""Reading Iterable's answers: a table of bodies shaped like the spec, and the partition rule."""

from __future__ import annotations

from typing import Any

import msgspec
import pytest
from hypothesis import given
from hypothesis import strategies as st

from forwarder.deliver.outcome import Outcome, classify_list, parse_retry_after, read_outcome
from forwarder.errors import Failure
from forwarder.iterable import Endpoint, Item, TrackEvent, UserUpdate

TRACK, UPDATE = Endpoint.TRACK_BULK, Endpoint.BULK_UPDATE


def details(dead: list[tuple[int, Failure]]) -> list[tuple[int, str]]:
    return [(index, failure.detail) for index, failure in dead]


def ev(
    n: int, email: str | None = None, user_id: str | None = None, name: str = "Purchase"
) -> TrackEvent:
    return TrackEvent(
        eventName=name,
        id=f"ev-{n}",
        createdAt=1_700_000_000,
        email=email if email is not None else f"u{n}@example.com",
        userId=user_id,
    )


def user(n: int, email: str | None = None, user_id: str | None = None) -> UserUpdate:
    return UserUpdate(email=email if email is not None else f"u{n}@example.com", userId=user_id)


def body(value: Any) -> bytes:
    return msgspec.json.encode(value)


def track_response(success: int, fail: int, **failed: list[str]) -> dict[str, Any]:
    """A BulkTrackResponse as api-docs.json defines it (FailedEventUpdates lists)."""
    lists = {
        name: failed.pop(name, [])
        for name in (
            "forgottenEmails",
            "forgottenUserIds",
            "invalidEmails",
            "invalidUserIds",
            "notFoundEmails",
            "notFoundUserIds",
        )
    }
    return {
        "successCount": success,
        "failCount": fail,
        "createdFields": [],
        "filteredOutFields": [],
        "disallowedEventNames": failed.pop("disallowedEventNames", []),
        "failedUpdates": lists,
    }


def assert_partition(outcome: Outcome, count: int) -> None:
    """Every index has exactly one fate (unless the batch is split or the sync paused)."""
    seen = (
        outcome.delivered
        + [i for i, _ in outcome.dead]
        + outcome.retry
        + outcome.not_found
        + outcome.resend
    )
    assert sorted(seen) == list(range(count)), outcome


# --- 200 ------------------------------------------------------------------------------


def test_a_clean_200_delivers_everything() -> None:
    items = [ev(n) for n in range(4)]
    outcome = read_outcome(TRACK, 200, {}, body(track_response(4, 0)), items)
    assert outcome.delivered == [0, 1, 2, 3]
    assert not (outcome.dead or outcome.retry or outcome.resend or outcome.split)
    assert outcome.retry_after is None and outcome.auth_failure is None


def test_track_bulk_partial_failures_map_to_the_items_they_name() -> None:
    items = [
        ev(0),
        ev(1, email="Bad@Invalid.Test"),  # the list has it lowercased
        ev(2, email="", user_id="gone"),
        ev(3, email="late@example.com"),
        ev(4, name="Blocked Event"),
        ev(5),
    ]
    answer = track_response(
        2,
        4,
        invalidEmails=["bad@invalid.test"],
        forgottenUserIds=["gone"],
        notFoundEmails=["late@example.com"],
        disallowedEventNames=["Blocked Event"],
    )
    outcome = read_outcome(TRACK, 200, {}, body(answer), items)
    assert outcome.delivered == [0, 5]
    assert details(outcome.dead) == [
        (1, "invalidEmails"),
        (2, "forgottenUserIds"),
        (4, "disallowedEventNames"),
    ]
    # Right after the user's bulkUpdate Iterable may not see the user yet: retried on
    # the not-found schedule.
    assert outcome.not_found == [3] and not outcome.retry
    assert "1 in notFoundEmails" in outcome.summary
    assert_partition(outcome, len(items))


def test_bulk_update_failure_lists_are_permanent_including_not_found() -> None:
    items = [
        user(0),
        user(1, user_id="taken"),
        user(2),
        user(3, email="", user_id="bad data"),
        user(4),
    ]
    answer = {
        "successCount": 1,
        "failCount": 4,
        "createdFields": ["plan"],
        "filteredOutFields": ["u4@example.com"],  # field names, never identities
        "failedUpdates": {
            "conflictUserIds": ["taken"],
            "conflictEmails": [],
            "invalidDataUserIds": ["bad data"],
            "forgottenEmails": ["u2@example.com"],
            "notFoundEmails": ["u0@example.com"],
        },
    }
    outcome = read_outcome(UPDATE, 200, {}, body(answer), items)
    assert outcome.delivered == [4]
    assert details(outcome.dead) == [
        (0, "notFoundEmails"),
        (1, "conflictUserIds"),
        (2, "forgottenEmails"),
        (3, "invalidDataUserIds"),
    ]
    assert_partition(outcome, len(items))


def test_deprecated_top_level_lists_are_read_too() -> None:
    items = [user(0), user(1, email="x@y", user_id="bad id ")]
    answer = {"successCount": 1, "failCount": 1, "invalidUserIds": ["bad id "]}
    outcome = read_outcome(UPDATE, 200, {}, body(answer), items)
    assert outcome.delivered == [0] and details(outcome.dead) == [(1, "invalidUserIds")]


def test_track_bulks_top_level_invalid_user_ids_are_users_not_found() -> None:
    # The spec: trackBulk's top-level invalidUserIds are "userId values that were not
    # found"; one that failedUpdates also lists as invalid is invalid.
    items = [ev(0, email="", user_id="late"), ev(1, email="", user_id="bad id "), ev(2)]
    answer = {
        "successCount": 1,
        "failCount": 2,
        "invalidUserIds": ["late", "bad id "],
        "failedUpdates": {"invalidUserIds": ["bad id "]},
    }
    outcome = read_outcome(TRACK, 200, {}, body(answer), items)
    assert outcome.not_found == [0] and details(outcome.dead) == [(1, "invalidUserIds")]
    assert outcome.delivered == [2]


def test_one_value_names_every_item_with_that_identity() -> None:
    items = [ev(0, email="same@example.com"), ev(1), ev(2, email="SAME@example.com")]
    answer = track_response(1, 2, invalidEmails=["same@example.com"])
    outcome = read_outcome(TRACK, 200, {}, body(answer), items)
    assert details(outcome.dead) == [(0, "invalidEmails"), (2, "invalidEmails")]
    assert outcome.delivered == [1]


def test_a_permanent_failure_wins_over_a_retryable_one() -> None:
    items = [ev(0, user_id="bad\u00e9")]
    answer = track_response(0, 1, notFoundEmails=["u0@example.com"], invalidUserIds=["bad\u00e9"])
    outcome = read_outcome(TRACK, 200, {}, body(answer), items)
    assert details(outcome.dead) == [(0, "invalidUserIds")] and not outcome.retry


def test_unknown_lists_are_tolerated_and_classified_by_their_name() -> None:
    items = [ev(0), ev(1, user_id="u-1"), ev(2), ev(3)]
    answer = {
        "successCount": 2,
        "failCount": 2,
        "failedUpdates": {
            "failedEmails": ["u0@example.com"],  # in Iterable's own client: cause unknown
            "blockedInvalidUserIds": ["u-1"],
            "noOpEmails": ["u2@example.com"],  # peers' mocks: Iterable took it, changed nothing
            "mystery": ["u3@example.com"],  # says nothing about what it holds: ignored
            "disallowedEventNames": "not a list",
        },
    }
    outcome = read_outcome(TRACK, 200, {}, body(answer), items)
    assert outcome.retry == [0]
    assert details(outcome.dead) == [(1, "blockedInvalidUserIds")]
    assert outcome.delivered == [2, 3]


def test_counts_reporting_more_failures_than_named_retry_the_unnamed_items() -> None:
    items = [ev(0), ev(1), ev(2)]
    answer = track_response(1, 2, invalidEmails=["u0@example.com"])
    outcome = read_outcome(TRACK, 200, {}, body(answer), items)
    assert details(outcome.dead) == [(0, "invalidEmails")]
    assert outcome.retry == [1, 2]  # one of them failed; we cannot tell which
    assert "not named by any list" in outcome.summary and not outcome.transient
    assert_partition(outcome, 3)


# --- failure lists naming items that were never sent ------------------------------------


def test_values_naming_no_item_do_not_make_the_others_retry() -> None:
    items = [ev(0), ev(1), ev(2)]
    # Iterable counts the stranger among the failures: the counts disagree only by it.
    answer = track_response(1, 2, invalidEmails=["u0@example.com", "someone-else@example.com"])
    outcome = read_outcome(TRACK, 200, {}, body(answer), items)
    assert details(outcome.dead) == [(0, "invalidEmails")]
    assert outcome.delivered == [1, 2] and not outcome.retry
    assert outcome.foreign == 1
    assert "1 listed value(s) not in the request (invalidEmails 1)" in outcome.summary
    assert_partition(outcome, 3)


@pytest.mark.parametrize("endpoint", [TRACK, UPDATE])
def test_a_whole_answer_about_other_items_delivers_the_batch(endpoint: Endpoint) -> None:
    # The case: 200 user updates retried 8 times for lists about other users.
    n = 200
    items: list[Item] = [ev(i) if endpoint is TRACK else user(i) for i in range(n)]
    strangers = [f"stranger{i}@example.com" for i in range(n)]
    answer = {
        "successCount": 0,
        "failCount": n,
        "failedUpdates": {"invalidEmails": strangers[:150], "notFoundEmails": strangers[150:]},
    }
    outcome = read_outcome(endpoint, 200, {}, body(answer), items)
    assert outcome.delivered == list(range(n))
    assert not (outcome.retry or outcome.dead or outcome.transient)
    assert outcome.foreign == n
    assert "invalidEmails 150, notFoundEmails 50" in outcome.summary


def test_only_the_named_items_in_the_request_get_a_fate_from_the_lists() -> None:
    items = [ev(0), ev(1, user_id="id-1"), ev(2), ev(3, email="late@example.com")]
    answer = track_response(
        1,
        5,
        invalidEmails=["u0@example.com", "ghost@example.com"],
        forgottenUserIds=["id-1", "ghost-id"],
        notFoundEmails=["late@example.com", "ghost2@example.com"],
    )
    outcome = read_outcome(TRACK, 200, {}, body(answer), items)
    assert details(outcome.dead) == [(0, "invalidEmails"), (1, "forgottenUserIds")]
    assert outcome.not_found == [3]  # notFound, in the request: its own schedule
    assert outcome.delivered == [2] and outcome.foreign == 3
    assert_partition(outcome, 4)


def test_counts_short_by_more_than_the_foreign_values_still_retry_the_unnamed() -> None:
    items = [ev(0), ev(1), ev(2)]
    # failCount 3: one named item, one stranger, and one failure nobody names.
    answer = track_response(0, 3, invalidEmails=["u0@example.com", "ghost@example.com"])
    outcome = read_outcome(TRACK, 200, {}, body(answer), items)
    assert details(outcome.dead) == [(0, "invalidEmails")] and outcome.retry == [1, 2]


# --- a 2xx that is not Iterable's answer ------------------------------------------------


@pytest.mark.parametrize(
    ("answer", "headers"),
    [
        (b"", {}),
        (b"   ", {}),
        (b"OK", {"Content-Type": "text/plain"}),
        (b"<html><body>Welcome</body></html>", {"Content-Type": "text/html; charset=utf-8"}),
        (b'{"successCount": 2, "failCount": 0, "failedUpd', {"Content-Type": "application/json"}),
        (b"[]", {}),
        (b'"done"', {}),
    ],
)
def test_a_2xx_without_iterables_json_object_is_a_transient_failure(
    answer: bytes, headers: dict[str, str]
) -> None:
    outcome = read_outcome(TRACK, 200, headers, answer, [ev(0), ev(1)])
    assert outcome.retry == [0, 1] and outcome.transient
    assert not (outcome.delivered or outcome.dead or outcome.resend or outcome.split)
    assert outcome.summary.startswith("200 without Iterable's JSON answer")
    if headers:
        assert headers["Content-Type"] in outcome.summary


def test_a_json_object_in_a_2xx_is_read_as_iterables_answer() -> None:
    answer = b'{"msg": "", "code": "Success", "params": null}'
    outcome = read_outcome(TRACK, 202, {}, answer, [ev(0), ev(1)])
    assert outcome.delivered == [0, 1] and not outcome.transient


def test_a_200_that_calls_itself_an_error_is_retried() -> None:
    answer = body({"msg": "Something went wrong", "code": "GenericError", "params": None})
    outcome = read_outcome(TRACK, 200, {}, answer, [ev(0), ev(1)])
    assert outcome.retry == [0, 1] and outcome.transient
    assert "GenericError" in outcome.summary


def test_junk_inside_a_200_is_skipped_not_raised() -> None:
    answer = {
        "successCount": "1",
        "failCount": True,  # not a count
        "failedUpdates": {
            "invalidEmails": [None, 7, {"x": 1}, "u1@example.com"],
            "notFoundEmails": "u0",
        },
        "disallowedEventNames": [["nested"]],
    }
    outcome = read_outcome(TRACK, 200, {}, body(answer), [ev(0), ev(1)])
    assert outcome.delivered == [0] and details(outcome.dead) == [(1, "invalidEmails")]


# --- retryable statuses ---------------------------------------------------------------


@pytest.mark.parametrize("status", [None, 408, 429, 500, 502, 503, 504])
def test_transient_answers_retry_everything(status: int | None) -> None:
    answer = body({"msg": "Rate limit exceeded", "code": "RateLimitExceeded", "params": None})
    outcome = read_outcome(TRACK, status, {}, answer, [ev(0), ev(1)])
    assert outcome.retry == [0, 1] and outcome.retry_after is None and outcome.transient
    assert not (outcome.delivered or outcome.dead or outcome.resend or outcome.split)


def test_retry_after_in_seconds_or_as_an_http_date() -> None:
    outcome = read_outcome(TRACK, 429, {"Retry-After": "7"}, b"", [ev(0)])
    assert outcome.retry == [0] and outcome.retry_after == 7.0
    date = {"retry-after": "Sun, 06 Nov 1994 08:49:37 GMT"}
    outcome = read_outcome(TRACK, 503, date, b"", [ev(0)], now=784111767.0)  # 10 s before it
    assert outcome.retry_after == pytest.approx(10.0)


@pytest.mark.parametrize(
    ("headers", "expected"),
    [
        ({}, None),
        ({"Retry-After": ""}, None),
        ({"Retry-After": "soon"}, None),
        ({"Retry-After": "nan"}, None),
        ({"Retry-After": "-3"}, 0.0),
        ({"Retry-After": "1.5"}, 1.5),
        ({"RETRY-AFTER": " 2 "}, 2.0),
        ({"Retry-After": "Sun, 06 Nov 1994 08:49:37 GMT"}, 0.0),  # in the past
        ({"Retry-After": "Sun, 06 Nov 1994 08:49:37 -0000"}, 0.0),
    ],
)
def test_parse_retry_after(headers: dict[str, str], expected: float | None) -> None:
    assert parse_retry_after(headers, now=1_000_000_000.0) == expected


# --- the whole request refused ----------------------------------------------------------


def bad_json(params: Any, msg: str = "Invalid JSON body", code: str = "BadJsonBody") -> bytes:
    return body({"msg": msg, "code": code, "params": params})


@pytest.mark.parametrize(
    "params",
    [
        {"obj.events[1].createdAt": [{"msg": ["error.expected.jsnumber"], "args": []}]},
        "events[1]",
        ["obj.events[1].dataFields.price"],
        {"errors": [{"path": "/events[1]/createdAt"}]},
    ],
)
def test_a_400_naming_an_item_kills_that_item_and_resends_the_rest(params: Any) -> None:
    items = [ev(n) for n in range(4)]
    outcome = read_outcome(TRACK, 400, {}, bad_json(params), items)
    assert details(outcome.dead) == [(1, "400 BadJsonBody: Invalid JSON body")]
    assert outcome.resend == [0, 2, 3]
    assert not (outcome.retry or outcome.split)


def test_a_400_may_name_several_items_and_only_in_its_own_list() -> None:
    items = [user(n) for n in range(5)]
    params = {"obj.users[3].dataFields": ["x"], "obj.users[0].email": ["y"], "obj.events[2]": ["z"]}
    outcome = read_outcome(
        UPDATE, 400, {}, bad_json(params, code="RequestFieldsTypesMismatched"), items
    )
    assert [i for i, _ in outcome.dead] == [0, 3]
    assert outcome.dead[0][1].detail.startswith("400 RequestFieldsTypesMismatched")
    assert outcome.resend == [1, 2, 4]


def test_a_400_item_named_only_in_the_message_counts() -> None:
    answer = bad_json(None, msg="Type mismatch at obj.events[2].createdAt")
    outcome = read_outcome(TRACK, 400, {}, answer, [ev(n) for n in range(3)])
    assert [i for i, _ in outcome.dead] == [2] and outcome.resend == [0, 1]


@pytest.mark.parametrize(
    "params", [None, {}, "obj.events", {"obj.events[9].createdAt": []}, {"x": 1}]
)
def test_a_400_naming_no_item_splits_the_batch(params: Any) -> None:
    outcome = read_outcome(TRACK, 400, {}, bad_json(params), [ev(n) for n in range(4)])
    assert outcome.split and not (
        outcome.dead or outcome.resend or outcome.retry or outcome.delivered
    )
    assert outcome.summary.startswith("400 BadJsonBody")


def test_a_400_on_a_single_item_is_dead() -> None:
    outcome = read_outcome(TRACK, 400, {}, b"<html>Bad Request</html>", [ev(0)])
    assert details(outcome.dead) == [(0, "400: <html>Bad Request</html>")] and not outcome.split


def test_the_status_is_trusted_over_a_success_code() -> None:
    answer = bad_json({"obj.events[0].id": ["too long"]}, msg="Bad id", code="Success")
    outcome = read_outcome(TRACK, 400, {}, answer, [ev(0), ev(1)])
    assert details(outcome.dead) == [(0, "400 Success: Bad id")] and outcome.resend == [1]


def test_409_kills_a_single_item_splits_a_batch_or_kills_what_it_names() -> None:
    conflict = body({"msg": "Email/userId conflict", "code": "ExternalKeyConflict", "params": None})
    single = read_outcome(UPDATE, 409, {}, conflict, [user(0)])
    assert details(single.dead) == [(0, "409 ExternalKeyConflict: Email/userId conflict")]
    assert read_outcome(UPDATE, 409, {}, conflict, [user(0), user(1)]).split
    named = body(
        {"msg": "Forgotten user", "code": "ForgottenUserError", "params": {"users[1]": "x"}}
    )
    outcome = read_outcome(UPDATE, 409, {}, named, [user(0), user(1), user(2)])
    assert [i for i, _ in outcome.dead] == [1] and outcome.resend == [0, 2]


def test_413_splits_a_batch_and_kills_a_single_item() -> None:
    assert read_outcome(TRACK, 413, {}, b"", [ev(0), ev(1)]).split
    outcome = read_outcome(TRACK, 413, {}, b"Request Entity Too Large", [ev(0)])
    assert details(outcome.dead) == [(0, "413: Request Entity Too Large")]


@pytest.mark.parametrize("status", [401, 403])
def test_auth_failures_pause_with_iterables_message_and_no_key(status: int) -> None:
    key = "0123456789abcdef0123456789ABCDEF"
    answer = body(
        {"msg": f"Invalid API key: {key}", "code": "BadApiKey", "params": {"apiKey": key}}
    )
    outcome = read_outcome(TRACK, status, {}, answer, [ev(0), ev(1)])
    assert outcome.auth_failure == f"{status} BadApiKey: Invalid API key: <redacted>"
    assert key not in repr(outcome)
    assert not (
        outcome.delivered or outcome.dead or outcome.retry or outcome.resend or outcome.split
    )


@pytest.mark.parametrize("status", [404, 405])
def test_wrong_url_answers_pause_like_a_bad_key(status: int) -> None:
    answer = body({"msg": "Not found", "code": "NotFound", "params": None})
    outcome = read_outcome(TRACK, status, {}, answer, [ev(0), ev(1)])
    assert outcome.auth_failure is not None and "base_url" in outcome.auth_failure
    assert not (outcome.delivered or outcome.dead or outcome.retry or outcome.resend)


@pytest.mark.parametrize("status", [301, 302, 303, 307, 308])
def test_a_redirect_pauses_naming_base_url_and_where_it_pointed(status: int) -> None:
    headers = {"location": "https://www.example.com/login?next=/api/events/trackBulk"}
    outcome = read_outcome(TRACK, status, headers, b"<html>Moved</html>", [ev(0), ev(1)])
    assert outcome.auth_failure is not None and "base_url" in outcome.auth_failure
    assert f"{status} redirect to https://www.example.com/login" in outcome.auth_failure
    assert not (outcome.delivered or outcome.dead or outcome.retry or outcome.resend)


@pytest.mark.parametrize("status", [410, 422])
def test_other_answers_dead_letter_the_batch_with_the_message(status: int) -> None:
    answer = body({"msg": "Not found", "code": "NotFound", "params": None})
    outcome = read_outcome(TRACK, status, {}, answer, [ev(0), ev(1)])
    assert details(outcome.dead) == [
        (0, f"{status} NotFound: Not found"),
        (1, f"{status} NotFound: Not found"),
    ]


def test_long_messages_are_cut_to_one_line() -> None:
    answer = body({"msg": "line one\nline two " + "x" * 1000, "code": "GenericError"})
    outcome = read_outcome(TRACK, 422, {}, answer, [ev(0)])
    ((_, failure),) = outcome.dead
    why = failure.detail
    assert (
        "\n" not in why and len(why) < 400 and why.startswith("422 GenericError: line one line two")
    )


# --- the classification and the partition ---------------------------------------------


@pytest.mark.parametrize(
    ("name", "endpoint", "fate"),
    [
        ("invalidEmails", TRACK, "dead"),
        ("forgottenUserIds", UPDATE, "dead"),
        ("conflictEmails", UPDATE, "dead"),
        ("invalidDataUserIds", UPDATE, "dead"),
        ("disallowedEventNames", TRACK, "dead"),
        ("notFoundEmails", TRACK, "not_found"),
        ("notFoundUserIds", UPDATE, "dead"),
        ("noOpEmails", UPDATE, "ignore"),
        ("failedUserIds", TRACK, "retry"),
        ("validEmailFailures", UPDATE, "retry"),
    ],
)
def test_classify_list(name: str, endpoint: Endpoint, fate: str) -> None:
    assert classify_list(name, endpoint) == fate


LIST_NAMES = [
    "invalidEmails",
    "invalidUserIds",
    "notFoundEmails",
    "notFoundUserIds",
    "forgottenEmails",
    "conflictUserIds",
    "failedEmails",
    "noOpUserIds",
    "disallowedEventNames",
]


@given(
    n=st.integers(min_value=1, max_value=12),
    picks=st.lists(st.tuples(st.sampled_from(LIST_NAMES), st.integers(0, 15)), max_size=20),
    success=st.one_of(st.none(), st.integers(0, 15)),
    fail=st.one_of(st.none(), st.integers(0, 15)),
    endpoint=st.sampled_from([TRACK, UPDATE]),
)
def test_every_200_gives_every_item_exactly_one_fate(
    n: int, picks: list[tuple[str, int]], success: int | None, fail: int | None, endpoint: Endpoint
) -> None:
    items: list[Item] = [
        ev(i, user_id=f"id-{i}", name=f"E{i % 3}")
        if endpoint is TRACK
        else user(i, user_id=f"id-{i}")
        for i in range(n)
    ]
    lists: dict[str, list[str]] = {}
    for name, i in picks:
        value = (
            f"E{i % 3}"
            if name.endswith("EventNames")
            else (f"u{i}@example.com" if "Email" in name else f"id-{i}")
        )
        lists.setdefault(name, []).append(value)
    answer = {"successCount": success, "failCount": fail, "failedUpdates": lists}
    outcome = read_outcome(endpoint, 200, {}, body(answer), items)
    assert not outcome.split and outcome.auth_failure is None
    assert_partition(outcome, n)


def test_a_named_type_mismatch_takes_its_same_type_siblings_along() -> None:
    from forwarder.iterable import TrackEvent

    def item(n: int, price: object, name: str = "Purchase") -> TrackEvent:
        return TrackEvent(
            eventName=name, id=f"e{n}", createdAt=1, email=f"u{n}@x.io", dataFields={"price": price}
        )

    items = [
        item(0, 1),
        item(1, "one"),
        item(2, 2),
        item(3, "three"),
        item(4, "four", name="Other"),
        item(5, 5.5),
    ]
    answer = body(
        {
            "msg": "Field type mismatch",
            "code": "RequestFieldsTypesMismatched",
            "params": {"obj.events[1].dataFields.price": "expected long"},
        }
    )
    outcome = read_outcome(TRACK, 400, {}, answer, items)
    assert sorted(i for i, _ in outcome.dead) == [1, 3]  # same event name, same type
    assert sorted(outcome.resend) == [0, 2, 4, 5]

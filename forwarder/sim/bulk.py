"""An admitted request: injected 500s, caps, decoding, then its items taken or failed."""

from __future__ import annotations

import random
import time
from collections.abc import Sequence

import msgspec

import forwarder.sim.rules as rules
from forwarder.iterable import Endpoint
from forwarder.sim.config import SimulatorConfig
from forwarder.sim.rules import Reply
from forwarder.sim.shapes import DECODERS, SimEvent, SimTrackBulk, SimUpdateEmail, SimUser
from forwarder.sim.state import SimulatorState


def process(
    endpoint: Endpoint,
    config: SimulatorConfig,
    state: SimulatorState,
    rng: random.Random,
    body: bytes,
) -> tuple[Reply, int]:
    """An admitted request's answer and its item count (0 when the body was not decoded)."""
    if config.error_rate > 0 and rng.random() < config.error_rate:
        return rules.error(500, "GenericError", "Internal error (simulated)"), 0
    if len(body) > config.max_request_bytes:
        return rules.too_large(len(body), config.max_request_bytes), 0
    if config.unique_fields_limit_exceeded and not endpoint.single:
        message = "Project has reached its limit of unique fields"
        return rules.error(400, "UniqueFieldsLimitExceeded", message), 0
    try:
        decoded = DECODERS[endpoint].decode(body)
    except msgspec.ValidationError as exc:
        return rules.validation_error(exc), 0
    except msgspec.DecodeError as exc:
        return rules.error(400, "BadJsonBody", f"Invalid JSON body: {exc}"), 0
    if isinstance(decoded, SimUpdateEmail):
        return _update_email(config, state, decoded), 1
    items: list[SimEvent] | list[SimUser]
    if isinstance(decoded, SimTrackBulk):
        items, cap = decoded.events, config.max_events_per_request
    else:
        items, cap = decoded.users, config.max_users_per_request
    count = len(items)
    state.max_items[endpoint.value] = max(state.max_items[endpoint.value], count)
    refusal = rules.too_many(endpoint, count, cap)
    if refusal is None:
        refusal = _first_refusal(endpoint, config, state, items)
    if refusal is not None:
        return refusal, count
    if isinstance(decoded, SimTrackBulk):
        return _track_bulk(config, state, decoded.events), count
    return _bulk_update(config, state, decoded.users), count


def _first_refusal(
    endpoint: Endpoint,
    config: SimulatorConfig,
    state: SimulatorState,
    items: Sequence[SimEvent | SimUser],
) -> Reply | None:
    """The answer refusing the whole request for one of its items; else record new types."""
    new_types: dict[tuple[str, str], str] = {}
    for index, item in enumerate(items):
        ok = rules.fields_ok(item.dataFields) if isinstance(item, SimEvent) else True
        refusal = rules.item_refusal(endpoint, index, item.email, item.userId, ok)
        if refusal is None and config.check_field_types:
            if isinstance(item, SimEvent):
                scope, fields = "event:" + item.eventName, rules.fields_of(item.dataFields)
            else:
                scope, fields = "user", item.dataFields
            at = f"obj.{endpoint.list_key}[{index}]"
            refusal = rules.type_refusal(state.field_types, new_types, at, scope, fields)
        if refusal is not None:
            return refusal
    state.field_types.update(new_types)
    return None


def _fail(
    state: SimulatorState,
    failed: dict[str, list[str]],
    endpoint: Endpoint,
    problem: str,
    item: SimEvent | SimUser,
) -> None:
    """Report an item in the failure list `problem` and count it."""
    failed[problem].append(rules.failed_value(problem, item.email, item.userId))
    state.failed[(endpoint.value, problem)] += 1


def _track_bulk(config: SimulatorConfig, state: SimulatorState, events: list[SimEvent]) -> Reply:
    endpoint = Endpoint.TRACK_BULK
    failed = rules.failure_lists(endpoint)
    disallowed: dict[str, None] = {}  # an ordered set of names
    taken = 0
    name = endpoint.value
    keep = config.record_items
    for event in events:
        if event.eventName in config.disallowed_event_names:
            disallowed[event.eventName] = None
            state.failed[(name, "disallowedEventNames")] += 1
            continue
        problem = rules.identity_problem(config, event.email, event.userId)
        person = state.person(event.email, event.userId, config.project_type)
        if problem is None and config.require_user_first:
            at = time.monotonic()
            if not state.visible(person, at, config.user_visible_after_seconds):
                by_user_id = event.userId and (
                    config.project_type != "email-based" or not event.email
                )
                problem = "notFoundUserIds" if by_user_id else "notFoundEmails"
        if problem is not None:
            _fail(state, failed, endpoint, problem, event)
            continue
        if person is not None and event.id is not None:
            person.event_ids.append(event.id)
        if keep:
            state.event_records.append(event)
        if event.id is not None:
            state.event_ids.add(event.id)
        taken += 1
    state.received[name] += taken
    return rules.summary(taken, len(events), failed, list(disallowed))


def _bulk_update(config: SimulatorConfig, state: SimulatorState, users: list[SimUser]) -> Reply:
    endpoint = Endpoint.BULK_UPDATE
    failed = rules.failure_lists(endpoint)
    taken = 0
    named: set[str] = set()
    twice = False
    for user in users:
        for key in (f"e:{user.email.lower()}" if user.email else "", f"u:{user.userId or ''}"):
            if key not in ("", "u:"):
                twice = twice or key in named
                named.add(key)
        problem = rules.identity_problem(config, user.email, user.userId)
        if problem is None:
            problem = state.merge_profile(user, config.project_type)
        if problem is not None:
            _fail(state, failed, endpoint, problem, user)
            continue
        if config.record_items:
            state.user_records.append(user)
        taken += 1
    state.received[endpoint.value] += taken
    state.users_twice_in_one_request += twice
    return rules.summary(taken, len(users), failed)


def _update_email(config: SimulatorConfig, state: SimulatorState, change: SimUpdateEmail) -> Reply:
    """users/updateEmail: the user found by currentEmail (else currentUserId) gets
    newEmail, keeping its fields and events. The spec: for email-based projects
    (userID-based and hybrid ones set the email with users/update); an error when the
    new email exists or the user is unknown."""
    if config.project_type == "userid-based":
        return rules.error(400, "BadParams", "Use users/update to change an email here")
    if change.currentEmail:
        person = state.person_by_email.get(change.currentEmail.lower())
        code, named = "UnknownEmailError", change.currentEmail
    elif change.currentUserId:
        person = state.person_by_user_id.get(change.currentUserId)
        code, named = "UnknownUserIdError", change.currentUserId
    else:
        return rules.error(400, "BadParams", "currentEmail or currentUserId is required")
    if "@" not in change.newEmail:
        return rules.error(400, "InvalidEmailAddressError", "newEmail is not an email")
    if person is None or not state.visible(
        person, time.monotonic(), config.user_visible_after_seconds
    ):
        return rules.error(400, code, f"No user {named}")
    other = state.person_by_email.get(change.newEmail.lower())
    if other is not None and other is not person:
        return rules.error(400, "EmailAlreadyExists", "A user with newEmail already exists")
    state.change_email(person, change.newEmail)
    state.email_changes.append((named, change.newEmail))
    state.received[Endpoint.UPDATE_EMAIL.value] += 1
    return Reply(200, {"msg": "", "code": "Success", "params": None})

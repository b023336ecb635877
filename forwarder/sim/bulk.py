"""An admitted bulk request: injected 500s, caps, decoding, then its items taken or failed."""

from __future__ import annotations

import random
from collections.abc import Sequence

import msgspec

import forwarder.sim.rules as rules
from forwarder.iterable import Endpoint
from forwarder.sim.config import SimulatorConfig
from forwarder.sim.rules import Reply
from forwarder.sim.shapes import DECODERS, SimEvent, SimTrackBulk, SimUser
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
    try:
        decoded = DECODERS[endpoint].decode(body)
    except msgspec.ValidationError as exc:
        return rules.validation_error(exc), 0
    except msgspec.DecodeError as exc:
        return rules.error(400, "BadJsonBody", f"Invalid JSON body: {exc}"), 0
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
        if (
            problem is None
            and config.require_user_first
            and not (
                (event.email and event.email.lower() in state.known_emails)
                or (event.userId and event.userId in state.known_user_ids)
            )
        ):
            problem = "notFoundEmails" if event.email else "notFoundUserIds"
        if problem is not None:
            _fail(state, failed, endpoint, problem, event)
            continue
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
    for user in users:
        problem = rules.identity_problem(config, user.email, user.userId)
        if problem is not None:
            _fail(state, failed, endpoint, problem, user)
            continue
        state.merge_profile(user)
        if config.record_items:
            state.user_records.append(user)
        taken += 1
    state.received[endpoint.value] += taken
    return rules.summary(taken, len(users), failed)

"""What the simulator keeps: requests, items, profiles, field types, stats and rate windows."""

from __future__ import annotations

import time
from collections import Counter, deque
from dataclasses import dataclass
from typing import Any

import msgspec

from forwarder.iterable import Endpoint
from forwarder.sim.recent import RecentRequests
from forwarder.sim.shapes import SimEvent, SimUser, event_dict


@dataclass(eq=False)
class SimPerson:
    """One user of the simulated project: its identifiers, fields, and events' ids."""

    email: str | None
    userId: str | None
    fields: dict[str, Any]
    created_at: float  # time.monotonic(); visibility counts from it (and email changes)
    event_ids: list[str]


@dataclass(slots=True)
class RequestRecord:
    """One request to a bulk endpoint, whatever its answer."""

    at: float  # time.monotonic() at arrival
    endpoint: str
    api_key: str
    items: int  # 0 when the body was not decoded
    body_bytes: int
    status: int


class SimulatorState:
    """Everything the simulator saw, for tests to assert on.

    `events` / `users` are the items Iterable took (answered as successes), as dicts, in
    arrival order; items reported as failures are only counted (`failed`). The simulator
    does not dedupe: a resent event id appears twice in `events`, once in `event_ids`.
    """

    def __init__(self) -> None:
        self.event_ids: set[str] = set()
        # Profiles by lowercased email and by userId; one dict of merged dataFields per
        # user, shared by both maps when the user has both identities.
        self.known_emails: dict[str, dict[str, Any]] = {}
        self.known_user_ids: dict[str, dict[str, Any]] = {}
        self.requests: list[RequestRecord] = []
        # The last bodies per endpoint with their answers, for `GET /_sim/requests`.
        self.recent = RecentRequests()
        # Probes of GET /api/channels (`check-config --online`), by status.
        self.channel_probes: Counter[int] = Counter()
        self.statuses: Counter[tuple[str, int]] = Counter()
        self.failed: Counter[tuple[str, str]] = Counter()  # (endpoint, list) -> items
        self.received: Counter[str] = Counter()  # endpoint -> items taken
        self.max_requests_in_one_second: Counter[str] = Counter()
        self.max_items: Counter[str] = Counter()
        self.max_bytes: Counter[str] = Counter()
        # Rate limiter: admitted arrivals per (key, endpoint); `_seen`: every arrival with
        # a good key, whatever its answer, to measure the sender's pacing.
        self._admitted: dict[tuple[str, str], deque[float]] = {}
        self._seen: dict[tuple[str, str], deque[float]] = {}
        # First JSON type seen per (scope, field), for check_field_types.
        self.field_types: dict[tuple[str, str], str] = {}
        self.event_records: list[SimEvent] = []  # decoded into `events` on first read
        self._events: list[dict[str, Any]] = []
        self.user_records: list[SimUser] = []
        self._users: list[dict[str, Any]] = []
        # The project's users, and how it finds them (email-based projects: by email;
        # userid-based: by userId; hybrid: both, each unique).
        self.people: list[SimPerson] = []
        self.person_by_email: dict[str, SimPerson] = {}
        self.person_by_user_id: dict[str, SimPerson] = {}
        # (currentEmail or currentUserId, newEmail) of every email change taken.
        self.email_changes: list[tuple[str, str]] = []
        # bulkUpdate requests that named one user more than once, and how many times.
        self.users_twice_in_one_request = 0

    @property
    def events(self) -> list[dict[str, Any]]:
        """Events taken, as dicts shaped like the request's items (fields decoded now)."""
        for record in self.event_records[len(self._events) :]:
            self._events.append(event_dict(record))
        return self._events

    @property
    def users(self) -> list[dict[str, Any]]:
        """User updates taken, as dicts shaped like the request's items."""
        for record in self.user_records[len(self._users) :]:
            self._users.append(msgspec.to_builtins(record))
        return self._users

    @property
    def rate_limited(self) -> int:
        """Requests answered 429."""
        return sum(n for (_, status), n in self.statuses.items() if status == 429)

    def profile(
        self, email: str | None = None, user_id: str | None = None
    ) -> dict[str, Any] | None:
        """A user's merged dataFields, by email (any case) or userId; None if unknown."""
        if email is not None:
            return self.known_emails.get(email.lower())
        if user_id is not None:
            return self.known_user_ids.get(user_id)
        return None

    def stats(self) -> dict[str, Any]:
        """The figures `GET /_sim/stats` serves."""
        requests: dict[str, dict[str, int]] = {}
        for (endpoint, status), n in sorted(self.statuses.items()):
            requests.setdefault(endpoint, {})[str(status)] = n
        failed: dict[str, dict[str, int]] = {}
        for (endpoint, name), n in sorted(self.failed.items()):
            failed.setdefault(endpoint, {})[name] = n
        return {
            "requests": requests,
            "rate_limited": self.rate_limited,
            "items_received": dict(self.received),
            "items_failed": failed,
            "events_received": self.received[Endpoint.TRACK_BULK.value],
            "distinct_event_ids": len(self.event_ids),
            "users_received": self.received[Endpoint.BULK_UPDATE.value],
            "known_users": len(self.people),
            "email_changes": len(self.email_changes),
            "users_twice_in_one_request": self.users_twice_in_one_request,
            "max_requests_in_one_second": dict(self.max_requests_in_one_second),
            "max_items_in_one_request": dict(self.max_items),
            "max_bytes_in_one_request": dict(self.max_bytes),
        }

    # --- bookkeeping the handlers call --------------------------------------------------

    def arrive(self, key: str, endpoint: Endpoint, at: float) -> None:
        """Count an arrival with a good key in its one-second window, for the pacing figure."""
        window = self._seen.setdefault((key, endpoint.value), deque())
        _slide(window, at)
        window.append(at)
        self.max_requests_in_one_second[endpoint.value] = max(
            self.max_requests_in_one_second[endpoint.value], len(window)
        )

    def admit(self, key: str, endpoint: Endpoint, at: float, rate: float) -> float | None:
        """Take the request into the limiter's window; else the seconds until a slot frees.

        Strict sliding window by arrival time: refused when `rate` requests were already
        admitted in the last 1.0 s. Refused requests do not enter the window.
        """
        window = self._admitted.setdefault((key, endpoint.value), deque())
        _slide(window, at)
        if len(window) >= rate:
            return max(0.0, window[0] + 1.0 - at)
        window.append(at)
        return None

    def person(self, email: str | None, user_id: str | None, project_type: str) -> SimPerson | None:
        """The user a request's identifiers find, as the project type looks users up."""
        by_email = self.person_by_email.get(email.lower()) if email else None
        by_user_id = self.person_by_user_id.get(user_id) if user_id else None
        if project_type == "userid-based":
            return by_user_id
        if project_type == "hybrid":
            return by_user_id or (by_email if not user_id else None)
        return by_email if email else by_user_id

    def visible(self, person: SimPerson | None, at: float, after: float) -> bool:
        return person is not None and at - person.created_at >= after

    def merge_profile(self, user: SimUser, project_type: str = "email-based") -> str | None:
        """Apply a user update as the project type does; a failure list's name if not.

        email-based: the email finds (or creates) the user and a userId beside it is
        stored on it; a userId alone finds one, or creates one with a placeholder email
        when preferUserId. userid-based: the userId finds or creates; the email is data.
        hybrid: the userId finds (else the email), the email is set on it, both unique.
        """
        at = time.monotonic()
        email = user.email.lower() if user.email else None
        if project_type == "userid-based" and not user.userId:
            return "invalidUserIds"
        person = self.person(email, user.userId, project_type)
        if person is None and project_type == "hybrid" and email and user.userId:
            person = self.person_by_email.get(email)
            if person is not None and person.userId not in (None, user.userId):
                return "conflictEmails"
        if person is None:
            if project_type == "email-based" and not email:
                if not user.preferUserId:
                    return "notFoundUserIds"
                email = f"{user.userId}@placeholder.email"
            person = SimPerson(None, None, {}, at, [])
            self.people.append(person)
        if email and email != person.email:
            other = self.person_by_email.get(email)
            if project_type == "hybrid" and other is not None and other is not person:
                return "conflictEmails"
            self._rekey_email(person, email)
        if user.userId and user.userId != person.userId:
            if person.userId is not None and project_type != "email-based":
                return "conflictUserIds"
            self.person_by_user_id.pop(person.userId or "", None)
            self.known_user_ids.pop(person.userId or "", None)
            person.userId = user.userId
            self.person_by_user_id[user.userId] = person
            self.known_user_ids[user.userId] = person.fields
        profile = person.fields
        for field, value in (user.dataFields or {}).items():
            old = profile.get(field)
            if user.mergeNestedObjects and isinstance(value, dict) and isinstance(old, dict):
                profile[field] = {**old, **value}  # merge top-level objects, not overwrite
            else:
                profile[field] = value
        return None

    def change_email(self, person: SimPerson, new_email: str) -> None:
        """updateEmail: the same user, its fields and events, under the new email."""
        self._rekey_email(person, new_email.lower())

    def _rekey_email(self, person: SimPerson, email: str) -> None:
        if person.email is not None and self.person_by_email.get(person.email) is person:
            del self.person_by_email[person.email]
            self.known_emails.pop(person.email, None)
        person.email = email
        self.person_by_email[email] = person
        self.known_emails[email] = person.fields


def _slide(window: deque[float], at: float) -> None:
    while window and at - window[0] >= 1.0:
        window.popleft()

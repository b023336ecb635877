"""The [[syncs]] section: one Iterable project, its mappings, filters, limits and delivery."""

from __future__ import annotations

from typing import Any, Literal

import msgspec

from forwarder.config.section import Positive, Section

# Amplitude property paths a mapping or filter may name: a top-level event field, or a
# property inside event_properties / user_properties.
PROPERTY_PREFIXES = ("event_properties.", "user_properties.")

FilterOp = Literal[
    "is",
    "is not",
    "contains",
    "does not contain",
    "greater than",
    "less than",
    "is set",
    "is not set",
]
# Iterable's project types (its project setting, fixed when the project is made): which
# field identifies a user, so which identifiers each endpoint gets (README, "Identity").
ProjectType = Literal["email-based", "userid-based", "hybrid"]

# Ops that compare against `value`; the others test presence only.
VALUE_OPS = frozenset({"is", "is not", "contains", "does not contain", "greater than", "less than"})


class Filter(Section):
    field: str
    op: FilterOp
    value: Any = None


class MappingsConfig(Section):
    email: str = "user_properties.email"
    # "" (or absent with null) turns the userId mapping off: email-based projects only.
    user_id: str | None = "user_id"
    campaign_id: str | None = None
    template_id: str | None = None
    # Amplitude path -> Iterable dataFields name.
    fields: dict[str, str] = {}
    # Email-based projects need an email by default; with false a userId alone identifies
    # the user (created with preferUserId). Other project types ignore it: userid-based
    # ones require a userId, hybrid ones either.
    require_email: bool = True


class EventsConfig(Section):
    enabled: bool = True
    select: list[str] = msgspec.field(default_factory=lambda: ["*"])
    where: list[Filter] = []
    event_properties: list[str] = []
    user_properties: list[str] = []


class UsersConfig(Section):
    enabled: bool = True
    user_properties: list[str] = []
    # users/bulkUpdate flags (RudderStack defaults both to true).
    prefer_user_id: bool = True
    merge_nested_objects: bool = True
    # Events of a user Iterable was never told about (Send Users off, or a user older
    # than the daemon) go after an identity-only bulkUpdate, so the user exists: an
    # email-based project refuses events of unknown users.
    identify_before_events: bool = False


class LimitsConfig(Section):
    track_bulk_per_second: Positive[float] = 10
    bulk_update_per_second: Positive[float] = 5
    # users/updateEmail (email changes): the spec documents no limit for it (users/update,
    # its single-user sibling, has 500/s); email changes are rare, so a low rate costs
    # nothing and cannot meet an undocumented limit.
    update_email_per_second: Positive[float] = 10
    max_events_per_request: Positive[int] = 8000
    max_users_per_request: Positive[int] = 1000
    max_request_bytes: Positive[int] = 4_000_000


class DeliveryConfig(Section):
    # A partial batch goes out after this long, so low traffic still flows quickly.
    linger_ms: int = 200
    # Requests in flight at once per endpoint, retries included.
    max_in_flight: Positive[int] = 4
    # Items queued for this sync (all users) before ingest answers 429.
    max_queued_items: Positive[int] = 500_000
    max_queued_bytes: Positive[int] = 512_000_000
    request_timeout_seconds: Positive[float] = 30.0
    # Attempts per item before it becomes a dead letter; 0 (the default): no bound. An
    # outage (no answer, 408/429/5xx, a 2xx that is not Iterable's answer) says nothing
    # about the items, so a count of attempts must not end it: max_retry_seconds and the
    # journal's room do (ingest answers 429 when the journal or the queue is full).
    max_attempts: int = 0
    # Seconds an item is retried before it becomes a dead letter; 0: forever. Six hours
    # carry a long Iterable incident through a night with no one on call (Amplitude's own
    # streaming retries for 4 h); past it the dead letters keep the items for a replay and
    # free the journal, which a week-long outage would otherwise fill.
    max_retry_seconds: float = 21600.0
    # Tries of an item Iterable answered about one by one but not for good (notFound on
    # trackBulk: its user is not visible yet; failures counted but not named): a property
    # of the item, not an outage, so bounded even when max_attempts is 0.
    item_retry_attempts: Positive[int] = 8
    # A user Iterable answers "not found" about (notFoundEmails/UserIds, trackBulk's
    # top-level invalidUserIds, an updateEmail of an unknown user) may just not be
    # visible yet: Iterable asks for up to 60 s after a user is created or updated. The
    # item is retried this long from its first not-found answer (which comes after its
    # user's update was acknowledged, as a user's items go in order), its user's later
    # items waiting behind it; then it is a dead letter, "user not found".
    not_found_retry_seconds: float = 120.0
    # The longest wait between those retries (they start at backoff_initial_seconds).
    not_found_backoff_max_seconds: Positive[float] = 15.0
    # A 400 that names no item and whose code is about one item (BadJsonBody, ...) is
    # bisected to find it; a chunk this many halvings deep, or past the batch's budget of
    # 2*ceil(log2(n)) + bisect_extra_requests split requests, is a dead letter instead.
    # Codes about the project or request (UniqueFieldsLimitExceeded, ...) never bisect.
    max_bisect_depth: Positive[int] = 13
    bisect_extra_requests: int = 4
    backoff_initial_seconds: Positive[float] = 0.5
    backoff_max_seconds: Positive[float] = 30.0
    # An outage pauses the sync (items stay queued, one probe batch per interval): after
    # this many failed requests in a row, spanning at least outage_pause_after_seconds.
    # Both, because one network blip fails every request in flight at the same instant.
    outage_pause_after_failures: Positive[int] = 5
    outage_pause_after_seconds: float = 10.0
    # While paused for an outage a probe goes after this long, the interval doubling per
    # failed probe up to the max: an answered probe resumes within that much of recovery.
    outage_probe_seconds: Positive[float] = 1.0
    outage_probe_max_seconds: Positive[float] = 30.0
    # After a 401/403 (or 404/405, a redirect: a wrong base_url) the sync pauses (items
    # stay queued) and probes again this often.
    auth_retry_seconds: Positive[float] = 60.0
    # Each failed probe doubles the interval, up to this.
    auth_retry_max_seconds: Positive[float] = 3600.0
    # Seconds an idle keep-alive connection to Iterable is kept open.
    keepalive_seconds: Positive[float] = 60.0
    # Sending stays this fraction under the rate limits, so jitter between our send and
    # Iterable's count (a busy loop on either side) cannot put two requests in one window.
    rate_headroom: float = 0.05


class SyncConfig(Section):
    name: str
    api_key: str
    enabled: bool = True
    # The Iterable project's type: its setting, which decides which identifiers each
    # endpoint gets. "email-based" matches the seed ("Email is required").
    project_type: ProjectType = "email-based"
    region: Literal["us", "eu"] = "us"
    base_url: str | None = None
    mappings: MappingsConfig = msgspec.field(default_factory=MappingsConfig)
    events: EventsConfig = msgspec.field(default_factory=EventsConfig)
    users: UsersConfig = msgspec.field(default_factory=UsersConfig)
    limits: LimitsConfig = msgspec.field(default_factory=LimitsConfig)
    delivery: DeliveryConfig = msgspec.field(default_factory=DeliveryConfig)

    @property
    def endpoint_base(self) -> str:
        """The URL the bulk paths hang off, ending in a slash."""
        if self.base_url:
            base = self.base_url.rstrip("/")
            return base + ("/" if base.endswith("/api") else "/api/")
        if self.region == "eu":
            return "https://api.eu.iterable.com/api/"
        return "https://api.iterable.com/api/"

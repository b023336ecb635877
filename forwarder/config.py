"""The config.toml schema as msgspec Structs, `${VAR}` expansion, and errors with key paths."""

from __future__ import annotations

import ipaddress
import os
import re
import tomllib
import types
import typing
from pathlib import Path
from typing import Annotated, Any, Literal, TypeVar
from urllib.parse import urlsplit

import msgspec

from forwarder.errors import ConfigError
from forwarder.ingest.amplitude import EVENT_FIELDS
from forwarder.ingest.cors import ANY_ORIGIN, origin_problem

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


class _Section(msgspec.Struct, forbid_unknown_fields=True, kw_only=True):
    """Base for config sections: a misspelt key is an error, not a silent default."""


class _PositiveMark:
    """The `Positive` marker; check_config finds it in a section's field types."""


_POSITIVE = _PositiveMark()
_Number = TypeVar("_Number", int, float)
# A setting that must be greater than 0. It is checked after decoding, by check_config,
# so a bad value is named by its key path in the same words as every other rule there.
Positive = Annotated[_Number, _POSITIVE]


# The smallest dead-letter cap: a few letters (about 1 KB each).
MIN_DEAD_LETTER_BYTES = 4096

# Amplitude takes 2,000 events a request; far more would make one request's memory huge.
MAX_EVENTS_PER_REQUEST_CEILING = 100_000


class ServerConfig(_Section):
    listen: str = "127.0.0.1:8080"
    # HOST:PORT for /metrics, /status and the operator routes: off the public ingest port,
    # which browsers reach, as Vector (8686) and Fluent Bit (2020) keep theirs.
    admin_listen: str = "127.0.0.1:9180"
    api_keys: list[str] = []
    max_body_bytes: Positive[int] = 20_000_000
    # Amplitude's HTTP V2 API takes at most 2000 events per request (413 past it; the SDKs
    # split and retry).
    max_events_per_request: Positive[int] = 2000
    # Seconds a drain waits for in-flight work on SIGTERM before leaving the rest queued.
    drain_timeout_seconds: Positive[float] = 20.0
    # Seconds the HTTP server gives open connections to finish once the drain is over.
    shutdown_timeout_seconds: Positive[float] = 5.0
    # Seconds a client has to send a request's headers, from connecting (or from the first
    # byte of its next request): a trickling client otherwise holds a socket for an hour.
    header_timeout_seconds: Positive[float] = 10.0
    # Seconds a kept-alive connection may sit idle between requests (nginx's default: 75).
    idle_timeout_seconds: Positive[float] = 75.0
    # Open client connections at most. Past it a new one replaces the oldest waiting for a
    # request; 503 when all are busy. The open-file limit is raised to fit it at start.
    max_connections: Positive[int] = 4096
    # Web page origins (scheme://host[:port]) whose browsers may call the ingest routes.
    # "*" lets any page send, as Amplitude's own endpoints do: the API key, not the
    # page, is what admits data. A list of origins narrows it; [] allows none.
    allowed_origins: list[str] = msgspec.field(default_factory=lambda: [ANY_ORIGIN])

    @property
    def host(self) -> str:
        return self.listen.rsplit(":", 1)[0].strip("[]")

    @property
    def port(self) -> int:
        return int(self.listen.rsplit(":", 1)[1])

    @property
    def admin_host(self) -> str:
        return self.admin_listen.rsplit(":", 1)[0].strip("[]")

    @property
    def admin_port(self) -> int:
        return int(self.admin_listen.rsplit(":", 1)[1])


class StorageConfig(_Section):
    path: str = "var"
    durability: Literal["journal", "memory"] = "journal"
    # Profiles kept in memory: in front of SQLite (journal), or all of them (memory mode,
    # where the least recently used past it is forgotten).
    profile_cache_size: Positive[int] = 100_000
    # Largest profile (its msgpack bytes) a change may make; past it the change is refused
    # and counted, as Amplitude caps user properties (1,000 of them, 1,024 chars each).
    max_profile_bytes: Positive[int] = 1_048_576
    # Journal disk cap; past it ingest answers 429.
    journal_max_bytes: Positive[int] = 2_000_000_000
    # A journal segment is closed and a new one started past this size; whole segments
    # below the checkpoint are deleted.
    journal_segment_bytes: Positive[int] = 64 * 1024 * 1024
    # How often the checkpoint is saved: profiles flushed to SQLite, then the journal
    # position they and delivery allow. Replay after a crash starts from it.
    checkpoint_interval_seconds: Positive[float] = 0.5
    # How often changed profiles are written to SQLite between checkpoints.
    profile_flush_seconds: Positive[float] = 0.2
    # Amplitude ignores an event whose insert_id its device (or user) already sent within
    # 7 days: a repeat is answered 200 and applies nothing.
    dedupe_window_seconds: Positive[int] = 7 * 24 * 3600
    # insert_ids remembered at most (154 bytes each in memory, measured: 150 MB at the
    # default; as many rows on disk). Past it the oldest are forgotten before their 7 days,
    # and a repeat of one is applied again. SDK retries come within minutes, so the window
    # that matters is covered: a million events back.
    dedupe_max_entries: Positive[int] = 1_000_000
    # Bytes each sync's dead-letter file may hold. Past it no letter is dropped: new dead
    # items wait unacknowledged (the journal keeps them, then ingest answers 429) until an
    # operator replays or purges. 1 GB is about a million letters: far more than a day of
    # a bad mapping, and well short of filling the disk the journal needs.
    dead_letter_max_bytes: Positive[int] = 1_000_000_000


class Filter(_Section):
    field: str
    op: FilterOp
    value: Any = None


class MappingsConfig(_Section):
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


class EventsConfig(_Section):
    enabled: bool = True
    select: list[str] = msgspec.field(default_factory=lambda: ["*"])
    where: list[Filter] = []
    event_properties: list[str] = []
    user_properties: list[str] = []


class UsersConfig(_Section):
    enabled: bool = True
    user_properties: list[str] = []
    # users/bulkUpdate flags (RudderStack defaults both to true).
    prefer_user_id: bool = True
    merge_nested_objects: bool = True
    # Events of a user Iterable was never told about (Send Users off, or a user older
    # than the daemon) go after an identity-only bulkUpdate, so the user exists: an
    # email-based project refuses events of unknown users.
    identify_before_events: bool = False


class LimitsConfig(_Section):
    track_bulk_per_second: Positive[float] = 10
    bulk_update_per_second: Positive[float] = 5
    # users/updateEmail (email changes): the spec documents no limit for it (users/update,
    # its single-user sibling, has 500/s); email changes are rare, so a low rate costs
    # nothing and cannot meet an undocumented limit.
    update_email_per_second: Positive[float] = 10
    max_events_per_request: Positive[int] = 8000
    max_users_per_request: Positive[int] = 1000
    max_request_bytes: Positive[int] = 4_000_000


class DeliveryConfig(_Section):
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


class SyncConfig(_Section):
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


class Config(_Section):
    server: ServerConfig = msgspec.field(default_factory=ServerConfig)
    storage: StorageConfig = msgspec.field(default_factory=StorageConfig)
    syncs: list[SyncConfig] = []


_ENV_REF = re.compile(r"\$\{([A-Za-z_][A-Za-z0-9_]*)(?::-([^}]*))?\}")


def expand_env(value: Any, env: dict[str, str] | os._Environ[str], path: str = "") -> Any:
    """Replace `${VAR}` (or `${VAR:-default}`) in every string; an unset VAR names its path."""
    if isinstance(value, str):

        def substitute(match: re.Match[str]) -> str:
            name, default = match.group(1), match.group(2)
            found = env.get(name)
            if found:
                return found
            if default is not None:
                return default
            raise ConfigError(path, f"environment variable {name} is not set")

        return _ENV_REF.sub(substitute, value)
    if isinstance(value, dict):
        return {k: expand_env(v, env, _join(path, k)) for k, v in value.items()}
    if isinstance(value, list):
        return [expand_env(v, env, f"{path}[{i}]") for i, v in enumerate(value)]
    return value


def _join(path: str, key: str) -> str:
    return f"{path}.{key}" if path else key


_MSGSPEC_PATH = re.compile(r" - at `\$(.*)`$")


def _from_validation_error(error: msgspec.ValidationError) -> ConfigError:
    """Turn msgspec's "Expected `int`, got `str` - at `$.syncs[0].x`" into a key-path error."""
    text = str(error)
    match = _MSGSPEC_PATH.search(text)
    path = match.group(1).lstrip(".") if match else ""
    message = text[: match.start()] if match else text
    message = message.replace("`", "")
    if message.startswith("Object contains unknown field "):
        field = message.removeprefix("Object contains unknown field ")
        return ConfigError(_join(path, field), "unknown key")
    if message.startswith("Object missing required field "):
        field = message.removeprefix("Object missing required field ")
        return ConfigError(_join(path, field), "required key is missing")
    if message.startswith("Invalid enum value "):
        allowed = _allowed_values(path)
        if allowed:
            given = message.removeprefix("Invalid enum value ")
            expected = ", ".join(f'"{value}"' for value in allowed)
            return ConfigError(path, f"invalid value {given}: expected one of {expected}")
    return ConfigError(path, message[0].lower() + message[1:] if message else "invalid value")


_PATH_STEP = re.compile(r"\.?([A-Za-z_][A-Za-z0-9_]*)|\[(\d+)\]")


def _allowed_values(path: str) -> tuple[Any, ...]:
    """The values of the Literal at a key path (`syncs[0].region`), else ()."""
    kind: Any = Config
    for match in _PATH_STEP.finditer(path):
        kind = _unwrap(kind)
        name, index = match.groups()
        if index is not None:
            args = typing.get_args(kind)
            kind = args[0] if typing.get_origin(kind) is list and args else None
        elif isinstance(kind, type) and issubclass(kind, msgspec.Struct):
            fields = {info.name: info.type for info in msgspec.structs.fields(kind)}
            kind = fields.get(name)
        else:
            return ()
    kind = _unwrap(kind)
    return typing.get_args(kind) if typing.get_origin(kind) is Literal else ()


def _unwrap(kind: Any) -> Any:
    """The type under Annotated[...] and `X | None`."""
    if typing.get_origin(kind) is Annotated:
        kind = typing.get_args(kind)[0]
    args = [arg for arg in typing.get_args(kind) if arg is not type(None)]
    if len(args) == 1 and typing.get_origin(kind) in (typing.Union, types.UnionType):
        return args[0]
    return kind


def parse_config(
    raw: dict[str, Any], env: dict[str, str] | os._Environ[str] | None = None
) -> Config:
    """Decode and check a parsed TOML document; raise ConfigError naming the key path."""
    expanded = expand_env(raw, os.environ if env is None else env)
    try:
        config = msgspec.convert(expanded, Config)
    except msgspec.ValidationError as error:
        raise _from_validation_error(error) from None
    check_config(config)
    return config


def load_config(path: str | Path, env: dict[str, str] | None = None) -> Config:
    try:
        text = Path(path).read_text(encoding="utf-8")
    except OSError as error:
        raise ConfigError("", f"cannot read {path}: {error.strerror}") from None
    try:
        raw = tomllib.loads(text)
    except tomllib.TOMLDecodeError as error:
        raise ConfigError("", f"{path} is not valid TOML: {error}") from None
    return parse_config(raw, env)


_PATH_HINT = (
    " (use an Amplitude event field such as user_id, event_properties.NAME or user_properties.NAME)"
)


def is_property_path(path: str) -> bool:
    """True for a top-level event field (`user_id`, `country`, ...) and `event_properties.X` /
    `user_properties.X`. A top-level name must be a field the ingest keeps: a typo such as
    `user_Id` would otherwise resolve to nothing on every event, silently."""
    if not path or path != path.strip():
        return False
    for prefix in PROPERTY_PREFIXES:
        if path.startswith(prefix):
            return len(path) > len(prefix)
    return path in EVENT_FIELDS


def _check_admin_listen(server: ServerConfig) -> None:
    admin = server.admin_listen
    if ":" not in admin or not admin.rsplit(":", 1)[1].isdigit():
        raise ConfigError("server.admin_listen", f"expected HOST:PORT, got {admin!r}")
    if not 0 <= server.admin_port < 65536:  # 0: any free port
        raise ConfigError("server.admin_listen", f"port {server.admin_port} is out of range")
    if server.admin_port == server.port != 0 and server.admin_host == server.host:
        raise ConfigError("server.admin_listen", f"is the same address as server.listen ({admin})")


def check_config(config: Config) -> None:
    """Rules a type cannot say: ranges, unique names, property paths, filter values."""
    server = config.server
    listen = server.listen
    if ":" not in listen or not listen.rsplit(":", 1)[1].isdigit():
        raise ConfigError("server.listen", f"expected HOST:PORT, got {listen!r}")
    if not 0 <= server.port < 65536:  # 0: any free port
        raise ConfigError("server.listen", f"port {server.port} is out of range")
    _check_admin_listen(server)
    if not server.api_keys:
        raise ConfigError("server.api_keys", "at least one Amplitude API key is required")
    for i, key in enumerate(server.api_keys):
        if not key:
            raise ConfigError(f"server.api_keys[{i}]", "is empty")
    _check_positive(server, "server")
    for i, origin in enumerate(server.allowed_origins):
        problem = origin_problem(origin)
        if problem is not None:
            raise ConfigError(f"server.allowed_origins[{i}]", problem)
    if ANY_ORIGIN in server.allowed_origins and len(server.allowed_origins) > 1:
        raise ConfigError("server.allowed_origins", "'*' allows every origin: list no others")
    if server.max_events_per_request > MAX_EVENTS_PER_REQUEST_CEILING:
        # The event count is checked by a decoder with one slot per allowed event.
        raise ConfigError(
            "server.max_events_per_request",
            f"at most {MAX_EVENTS_PER_REQUEST_CEILING}, got {server.max_events_per_request}",
        )
    if not config.storage.path:
        raise ConfigError("storage.path", "is empty")
    _check_positive(config.storage, "storage")
    if config.storage.dead_letter_max_bytes < MIN_DEAD_LETTER_BYTES:
        # Below a few letters' worth every dead item would wait: a typo, not a choice.
        raise ConfigError(
            "storage.dead_letter_max_bytes",
            f"at least {MIN_DEAD_LETTER_BYTES}, got {config.storage.dead_letter_max_bytes}",
        )

    names: set[str] = set()
    for i, sync in enumerate(config.syncs):
        at = f"syncs[{i}]"
        if not sync.name or not re.fullmatch(r"[A-Za-z0-9_.-]+", sync.name):
            raise ConfigError(f"{at}.name", "use letters, digits, '-', '_' or '.'")
        if sync.name in names:
            raise ConfigError(f"{at}.name", f"duplicate sync name {sync.name!r}")
        names.add(sync.name)
        if sync.enabled and not sync.api_key:
            raise ConfigError(f"{at}.api_key", "is empty")
        if sync.base_url is not None and not re.match(r"https?://[^/]+", sync.base_url):
            raise ConfigError(f"{at}.base_url", "expected an http:// or https:// URL")
        if sync.enabled and sync.api_key in DEV_ITERABLE_KEYS and targets_iterable(sync):
            raise ConfigError(
                f"{at}.api_key",
                f"{sync.api_key!r} is the shipped development key and this sync sends to "
                f"Iterable ({sync.endpoint_base}): set ITERABLE_API_KEY to the project's "
                "server-side key, or point base_url at a simulator",
            )
        _check_mappings(sync.mappings, f"{at}.mappings")
        if sync.project_type == "userid-based" and not sync.mappings.user_id:
            raise ConfigError(
                f"{at}.mappings.user_id",
                "a userid-based project identifies users by userId: it cannot be off",
            )
        _check_events(sync.events, f"{at}.events")
        for j, name in enumerate(sync.users.user_properties):
            _property_name(name, f"{at}.users.user_properties[{j}]")
        _check_limits(sync.limits, f"{at}.limits")
        _check_delivery(sync.delivery, f"{at}.delivery")


# Keys config.toml falls back to when the environment sets none: fine against the
# simulator (`make run`), never to be sent to the real Iterable or exposed beyond loopback.
DEV_ITERABLE_KEYS = frozenset({"simulator-key"})
DEV_AMPLITUDE_KEYS = frozenset({"local-dev-key"})


def targets_iterable(sync: SyncConfig) -> bool:
    """True when the sync sends to Iterable itself: no base_url, or one on iterable.com."""
    if not sync.base_url:
        return True
    host = (urlsplit(sync.base_url).hostname or "").lower().rstrip(".")
    return host == "iterable.com" or host.endswith(".iterable.com")


def _is_loopback(host: str) -> bool:
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False  # a name, or "" (every address): reachable from elsewhere


def config_warnings(config: Config) -> list[str]:
    """Risky but usable settings, for check-config and the daemon's start: key-path lines."""
    warnings = []
    server = config.server
    if not _is_loopback(server.host):
        for i, key in enumerate(server.api_keys):
            if key in DEV_AMPLITUDE_KEYS:
                warnings.append(
                    f"server.api_keys[{i}]: {key!r} is the shipped development key and "
                    f"listen {server.listen} is not a loopback address: anyone who can reach "
                    "it can send (set AMPLITUDE_API_KEY)"
                )
    return warnings


def _check_mappings(mappings: MappingsConfig, at: str) -> None:
    for key in ("email", "user_id", "campaign_id", "template_id"):
        path = getattr(mappings, key)
        if key == "user_id" and path == "":
            continue  # the userId mapping turned off
        if path is not None and not is_property_path(path):
            raise ConfigError(f"{at}.{key}", f"not a property path: {path!r}{_PATH_HINT}")
    for source, target in mappings.fields.items():
        if not is_property_path(source):
            raise ConfigError(f"{at}.fields.{source}", f"not a property path{_PATH_HINT}")
        if not target:
            raise ConfigError(f"{at}.fields.{source}", "Iterable field name is empty")


def _check_events(events: EventsConfig, at: str) -> None:
    for j, event_type in enumerate(events.select):
        if not event_type:
            raise ConfigError(f"{at}.select[{j}]", "is empty")
    for j, rule in enumerate(events.where):
        if not is_property_path(rule.field):
            raise ConfigError(
                f"{at}.where[{j}].field", f"not a property path: {rule.field!r}{_PATH_HINT}"
            )
        if rule.op in VALUE_OPS and rule.value is None:
            raise ConfigError(f"{at}.where[{j}].value", f"op {rule.op!r} needs a value")
        if rule.op in ("greater than", "less than") and (
            isinstance(rule.value, bool) or not isinstance(rule.value, (int, float))
        ):
            raise ConfigError(f"{at}.where[{j}].value", f"op {rule.op!r} needs a number")
    for j, name in enumerate(events.event_properties):
        _property_name(name, f"{at}.event_properties[{j}]")
    for j, name in enumerate(events.user_properties):
        _property_name(name, f"{at}.user_properties[{j}]")


def _property_name(name: str, at: str) -> None:
    if not name:
        raise ConfigError(at, "is empty")


def _check_limits(limits: LimitsConfig, at: str) -> None:
    _check_positive(limits, at)
    if limits.max_request_bytes < 1024:
        raise ConfigError(f"{at}.max_request_bytes", "must be at least 1024")


def _check_delivery(delivery: DeliveryConfig, at: str) -> None:
    _check_positive(delivery, at)
    for key in (
        "max_attempts",
        "max_retry_seconds",
        "outage_pause_after_seconds",
        "not_found_retry_seconds",
        "bisect_extra_requests",
    ):
        if getattr(delivery, key) < 0:
            raise ConfigError(f"{at}.{key}", "must be 0 or more")
    if delivery.outage_probe_max_seconds < delivery.outage_probe_seconds:
        raise ConfigError(f"{at}.outage_probe_max_seconds", "must be at least outage_probe_seconds")
    if not 0 <= delivery.rate_headroom < 0.5:
        raise ConfigError(f"{at}.rate_headroom", "must be in [0, 0.5)")
    if delivery.linger_ms < 0:
        raise ConfigError(f"{at}.linger_ms", "must be 0 or more")


def _check_positive(section: _Section, at: str) -> None:
    """The section's `Positive` fields, in the order they are declared."""
    for info in msgspec.structs.fields(section):
        if _POSITIVE in getattr(info.type, "__metadata__", ()):
            value = getattr(section, info.name)
            if value <= 0:
                raise ConfigError(f"{at}.{info.name}", f"must be greater than 0, got {value}")


def summarize(config: Config) -> str:
    """The lines `forwarder check-config` prints."""
    lines = [
        f"listen {config.server.listen}, {len(config.server.api_keys)} Amplitude key(s), "
        f"storage {config.storage.path} ({config.storage.durability})"
    ]
    for sync in config.syncs:
        state = "enabled" if sync.enabled else "disabled"
        events = (
            f"events {', '.join(sync.events.select)} ({len(sync.events.where)} filter(s))"
            if sync.events.enabled
            else "events off"
        )
        users = (
            f"users {len(sync.users.user_properties)} propert(ies)"
            if sync.users.enabled
            else "users off"
        )
        lines.append(
            f"sync {sync.name}: {state}, {sync.project_type} project, {sync.endpoint_base}, "
            f"{events}, {users}, email <- {sync.mappings.email}, "
            f"userId <- {sync.mappings.user_id or 'off'}"
        )
    if not config.syncs:
        lines.append("no syncs: events are accepted and dropped after validation")
    return "\n".join(lines)

"""Hot-path benchmark: decode -> profile -> route -> batch encode, on one core, no I/O.

In the same run, on the same bodies, it measures two references:
- floor: msgspec decode of the request and encode of its events, no logic at all;
- naive: the same mapping written the obvious way with the stdlib json module and dicts.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import time
from collections.abc import Callable
from typing import Any

import msgspec

from bench.bodies import make_bodies
from bench.report import write_result
from forwarder.config import SyncConfig
from forwarder.ingest.amplitude import UploadRequest, decode_upload
from forwarder.ingest.intake import Intake
from forwarder.iterable import Endpoint, assemble_body
from forwarder.store.profiles import MemoryProfileStore

API_KEYS = frozenset({"bench-key"})
SYNC = msgspec.convert(
    {
        "name": "bench",
        "api_key": "k",
        "mappings": {
            "campaign_id": "event_properties.campaign_id",
            "template_id": "event_properties.template_id",
            "fields": {"user_properties.plan": "planName"},
        },
        "events": {
            "select": ["*"],
            "event_properties": ["price", "sku"],
            "user_properties": ["plan"],
        },
        "users": {"user_properties": ["plan", "city"]},
    },
    SyncConfig,
)
BATCH_ITEMS = 8000
USERS_PER_BATCH = 1000


def ours(bodies: list[bytes]) -> int:
    """What the daemon does per request, minus the sockets and the queues: the ingest's
    decode and validation, the daemon's own intake (profiles, routing, encoding), and
    the bulk bodies those items travel in."""
    # The memory store needs no load(), so the intake runs without an event loop.
    intake = Intake([SYNC], MemoryProfileStore(capacity=1_000_000), max_profile_bytes=1 << 20)
    tracks: list[bytes] = []
    users: list[bytes] = []
    sent = 0
    now = int(time.time())
    for body in bodies:
        intaken = intake.process(decode_upload(body, API_KEYS, 2000), now)
        intake.commit(intaken)  # memory mode: durable at once
        for _, endpoint, _, encoded in intaken.routed:
            (tracks if endpoint is Endpoint.TRACK_BULK else users).append(encoded)
        # Cut per request, as a batcher would between requests.
        if len(tracks) >= BATCH_ITEMS:
            sent += len(assemble_body(Endpoint.TRACK_BULK, tracks)) > 0
            tracks = []
        if len(users) >= USERS_PER_BATCH:
            sent += len(assemble_body(Endpoint.BULK_UPDATE, users)) > 0
            users = []
    return sent


def floor(bodies: list[bytes]) -> int:
    """msgspec decode + encode of the same data, no logic: the cost of the bytes alone."""
    decoder = msgspec.json.Decoder(UploadRequest)
    encode = msgspec.json.Encoder().encode
    total = 0
    for body in bodies:
        request = decoder.decode(body)
        total += len(encode(request.events))
    return total


def naive(bodies: list[bytes]) -> int:
    """The same mapping with json and dicts, as one would write it first."""
    profiles: dict[str, dict[str, Any]] = {}
    tracks: list[dict[str, Any]] = []
    users: list[dict[str, Any]] = []
    sent = 0
    now = int(time.time())
    for body in bodies:
        request = json.loads(body)
        if request.get("api_key") not in API_KEYS:
            raise ValueError("bad key")
        for event in request["events"]:
            if not event.get("event_type") or not (event.get("user_id") or event.get("device_id")):
                raise ValueError("bad event")
            user = event.get("user_id") or event.get("device_id")
            new_user = user not in profiles
            profile = profiles.setdefault(user, {})
            changed: set[str] = set()
            for op, values in (event.get("user_properties") or {}).items():
                for key, value in values.items():
                    old = profile.get(key)
                    new = (old or 0) + value if op == "$add" else value
                    if old != new:
                        profile[key] = new
                        changed.add(key)
            email = profile.get("email")
            identity = {"email": email, "userId": event.get("user_id")}
            if email and (new_user or changed & {"plan", "city", "email"}):
                fields: dict[str, Any] = {k: profile[k] for k in ("plan", "city") if k in profile}
                if "plan" in profile:
                    fields["planName"] = profile["plan"]
                users.append(
                    {
                        **identity,
                        "dataFields": fields,
                        "preferUserId": True,
                        "mergeNestedObjects": True,
                    }
                )
            if email:
                props = event.get("event_properties") or {}
                fields = {k: props[k] for k in ("price", "sku") if k in props}
                if "plan" in profile:
                    fields["plan"] = profile["plan"]
                    fields["planName"] = profile["plan"]
                item = {
                    **identity,
                    "eventName": event["event_type"],
                    "id": event.get("insert_id")
                    or hashlib.blake2b(
                        json.dumps(event, sort_keys=True).encode(), digest_size=16
                    ).hexdigest(),
                    "createdAt": event["time"] // 1000 if "time" in event else now,
                    "dataFields": fields,
                }
                if isinstance(props.get("campaign_id"), int):
                    item["campaignId"] = props["campaign_id"]
                if isinstance(props.get("template_id"), int):
                    item["templateId"] = props["template_id"]
                tracks.append(item)
            if len(tracks) >= BATCH_ITEMS:
                sent += len(json.dumps({"events": tracks})) > 0
                tracks = []
            if len(users) >= USERS_PER_BATCH:
                sent += len(json.dumps({"users": users})) > 0
                users = []
    return sent


def best_rate(
    run: Callable[[list[bytes]], int], bodies: list[bytes], events: int, repeats: int
) -> float:
    best = 0.0
    for _ in range(repeats):
        started = time.perf_counter()
        run(bodies)
        elapsed = time.perf_counter() - started
        best = max(best, events / elapsed)
    return best


def main(argv: list[str] | None = None) -> dict[str, Any]:
    parser = argparse.ArgumentParser(prog="python -m bench hotpath", description=__doc__)
    parser.add_argument("--bodies", type=int, default=300, help="100-event bodies per run")
    parser.add_argument("--events-per-body", type=int, default=100)
    parser.add_argument("--repeats", type=int, default=3, help="runs of each; the best counts")
    parser.add_argument("--seed", type=int, default=1)
    parser.add_argument("--users", type=int, default=5000, help="distinct users in the bodies")
    args = parser.parse_args(argv)
    bodies = make_bodies(args.bodies, args.events_per_body, users=args.users, seed=args.seed)
    events = args.bodies * args.events_per_body
    ours_rate = best_rate(ours, bodies, events, args.repeats)
    floor_rate = best_rate(floor, bodies, events, args.repeats)
    naive_rate = best_rate(naive, bodies, events, args.repeats)
    result = {
        "benchmark": "hotpath",
        "events": events,
        "events_per_second": round(ours_rate),
        "floor_events_per_second": round(floor_rate),
        "naive_events_per_second": round(naive_rate),
        "ratio_to_floor": round(ours_rate / floor_rate, 3),
        "ratio_to_naive": round(ours_rate / naive_rate, 3),
    }
    print(
        f"hot path: {ours_rate:,.0f} events/s on one core "
        f"(floor msgspec-only {floor_rate:,.0f}/s: {result['ratio_to_floor']:.2f}x of it; "
        f"naive json+dicts {naive_rate:,.0f}/s: {result['ratio_to_naive']:.2f}x it)"
    )
    write_result("hotpath", result)
    return result


if __name__ == "__main__":
    main()

"""Seeded, realistic Amplitude request bodies for the benchmarks."""

from __future__ import annotations

import random
from typing import Any

import msgspec

EVENT_TYPES = (
    "Purchase",
    "Page Viewed",
    "Button Clicked",
    "Signed Up",
    "Add To Cart",
    "Checkout Started",
    "Search",
    "Video Played",
    "Item Shared",
    "Logged In",
)
PLANS = ("free", "pro", "team", "enterprise")
CITIES = ("Berlin", "Paris", "Lisbon", "Austin", "Osaka", "Lagos", "Lima")


def make_event(rng: random.Random, users: int, serial: int) -> dict[str, Any]:
    user = rng.randrange(users)
    properties: dict[str, Any] = {
        "price": round(rng.uniform(1, 200), 2),
        "sku": f"SKU-{rng.randrange(10_000):05d}",
        "campaign_id": rng.randrange(1, 5000),
        "template_id": rng.randrange(1, 900),
    }
    for n in range(rng.randrange(0, 12)):
        properties[f"prop_{n}"] = rng.choice(
            [rng.randrange(1000), f"value-{rng.randrange(100)}", rng.random() < 0.5, [1, 2, 3]]
        )
    event: dict[str, Any] = {
        "event_type": rng.choice(EVENT_TYPES),
        "user_id": f"user-{user:07d}",
        "device_id": f"device-{user:07d}",
        "time": 1_760_000_000_000 + serial,
        "insert_id": f"ins-{serial:012d}",
        "event_properties": properties,
        "platform": "Web",
        "os_name": "Chrome",
        "country": "Germany",
        "language": "en",
        "library": "bench/1.0",
    }
    if rng.random() < 0.25:
        event["user_properties"] = {
            "$set": {
                "email": f"user{user}@example.com",
                "plan": rng.choice(PLANS),
                "city": rng.choice(CITIES),
            },
            "$add": {"visits": 1},
        }
    return event


def make_bodies(
    count: int,
    events_per_body: int = 100,
    users: int = 50_000,
    seed: int = 1,
    api_key: str = "bench-key",
) -> list[bytes]:
    """`count` JSON bodies for /2/httpapi, each with `events_per_body` events."""
    rng = random.Random(seed)
    bodies = []
    serial = 0
    for _ in range(count):
        events = []
        for _ in range(events_per_body):
            events.append(make_event(rng, users, serial))
            serial += 1
        bodies.append(msgspec.json.encode({"api_key": api_key, "events": events}))
    return bodies


def identify_bodies(users: int, per_body: int = 500, api_key: str = "bench-key") -> list[bytes]:
    """$identify events giving every user an email, so their events can be sent."""
    bodies = []
    for start in range(0, users, per_body):
        events = [
            {
                "event_type": "$identify",
                "user_id": f"user-{user:07d}",
                "user_properties": {"$set": {"email": f"user{user}@example.com", "plan": "free"}},
            }
            for user in range(start, min(users, start + per_body))
        ]
        bodies.append(msgspec.json.encode({"api_key": api_key, "events": events}))
    return bodies

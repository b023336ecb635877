"""Reading the two KV buckets nodes coordinate through: partition leases, and live nodes.

stream.ensure_buckets creates them; both keep an entry `lease_seconds` after its last write.
"""

from __future__ import annotations

import asyncio
import re
import time

import msgspec
from nats.errors import Error as NatsError
from nats.js import JetStreamContext
from nats.js.errors import KeyNotFoundError
from nats.js.kv import KeyValue

from forwarder import __version__

# Any NATS trouble a coordination call can meet: a refusal, a timeout, a dropped link.
NATS_TROUBLE = (NatsError, asyncio.TimeoutError, OSError)

_LEASE_KEY = re.compile(r"p\.(\d+)")


class NodeAdvert(msgspec.Struct, frozen=True):
    """What a node says about itself in the nodes bucket (the value of its key)."""

    started_at: float = 0.0
    admin_listen: str = ""
    version: str = __version__


class Lease(msgspec.Struct, frozen=True):
    """Who holds a partition, and the KV revision to compare-and-set against."""

    owner: str
    revision: int


def lease_key(partition: int) -> str:
    return f"p.{partition}"


def partition_of_key(key: str) -> int | None:
    match = _LEASE_KEY.fullmatch(key)
    return int(match.group(1)) if match else None


async def read_entries(
    js: JetStreamContext, bucket: KeyValue, name: str
) -> dict[str, tuple[bytes, int]]:
    """Every live key of the bucket `name` with its value and revision. One stream info
    names the keys that have a message (deleted ones too); their values come at once."""
    prefix = f"$KV.{name}."
    info = await js.stream_info(f"KV_{name}", subjects_filter=f"{prefix}>")
    keys = [subject[len(prefix) :] for subject in (info.state.subjects or {})]

    async def one(key: str) -> tuple[str, bytes, int] | None:
        try:
            entry = await bucket.get(key)
        except KeyNotFoundError:  # deleted, or expired between the two calls
            return None
        return key, entry.value or b"", entry.revision or 0

    found = await asyncio.gather(*(one(key) for key in keys))
    return {key: (value, revision) for key, value, revision in filter(None, found)}


async def read_leases(js: JetStreamContext, bucket: KeyValue, name: str) -> dict[int, Lease]:
    leases: dict[int, Lease] = {}
    for key, (value, revision) in (await read_entries(js, bucket, name)).items():
        partition = partition_of_key(key)
        if partition is not None:
            leases[partition] = Lease(owner=value.decode(errors="replace"), revision=revision)
    return leases


async def read_nodes(js: JetStreamContext, bucket: KeyValue, name: str) -> dict[str, NodeAdvert]:
    nodes: dict[str, NodeAdvert] = {}
    for key, (value, _) in (await read_entries(js, bucket, name)).items():
        try:
            nodes[key] = msgspec.json.decode(value, type=NodeAdvert)
        except msgspec.DecodeError:
            nodes[key] = NodeAdvert()  # alive all the same: it wrote its key
    return nodes


def advert_now(admin_listen: str = "") -> NodeAdvert:
    return NodeAdvert(started_at=time.time(), admin_listen=admin_listen)

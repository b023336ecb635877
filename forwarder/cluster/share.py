"""Which partitions a node should hold: its fair share, and which to take or give up."""

from __future__ import annotations

import hashlib
from collections.abc import Collection, Mapping

import msgspec


def quota(node: str, live: Collection[str], partitions: int) -> int:
    """This node's share of `partitions` among the `live` nodes (itself always counted):
    partitions // n each, and one more for the first partitions % n nodes by name, so
    shares differ by one at most (64 over three: 22, 21, 21) and every node that sees
    the same live set agrees on all of them without talking."""
    names = sorted({*live, node})
    base, extra = divmod(partitions, len(names))
    return base + (1 if names.index(node) < extra else 0)


def preference(node: str, partition: int) -> int:
    """How much `node` wants `partition` (rendezvous hashing): nodes walk the free
    partitions in different orders, so a cold start doesn't have them all race for p.0."""
    digest = hashlib.blake2b(f"{node}\x00{partition}".encode(), digest_size=8).digest()
    return int.from_bytes(digest, "big")


class Plan(msgspec.Struct, frozen=True):
    """What one round of ownership does: leases to try to take, leases to give up."""

    take: list[int]
    release: list[int]


def plan(
    node: str,
    share: int,
    mine: Collection[int],
    holders: Mapping[int, str],
    partitions: int,
) -> Plan:
    """Give up the least wanted partitions past `share`, or take the most wanted free
    ones up to it. `holders` names the node holding each leased partition; one leased to
    this node but not in `mine` (a lease from before a restart, or a renewal whose answer
    was lost) counts as free, since no other node can hold it."""
    if len(mine) > share:
        ranked = sorted(mine, key=lambda p: preference(node, p))
        return Plan(take=[], release=ranked[: len(mine) - share])
    free = [p for p in range(partitions) if p not in mine and holders.get(p, node) == node]
    free.sort(key=lambda p: preference(node, p), reverse=True)
    return Plan(take=free[: share - len(mine)], release=[])

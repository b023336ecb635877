"""Partition ownership on a real NATS: one owner per partition, failover, joins, fencing."""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator

import pytest

from forwarder.cluster.buckets import read_leases
from forwarder.cluster.stream import lease_bucket
from tests.cluster.ownership import PARTITIONS, Cutter, Nodes
from tests.cluster.servers import NatsServer

# Short leases keep the tests quick; the failover test runs the shipped default (6 s).
SHORT_LEASE = 3.0


@pytest.fixture
async def nodes(nats_server: NatsServer, request: pytest.FixtureRequest) -> AsyncIterator[Nodes]:
    lease = getattr(request, "param", SHORT_LEASE)
    group = Nodes(nats_server.url, lease)
    try:
        yield group
    finally:
        await group.close()


def fair(split: list[int], count: int) -> bool:
    low = PARTITIONS // count
    return len(split) == count and all(low <= n <= low + 1 for n in split)


async def test_three_nodes_split_the_partitions_once_each(nodes: Nodes) -> None:
    await asyncio.gather(*(nodes.add(name) for name in ("a", "b", "c")))
    took = await nodes.until(lambda: fair(nodes.split(), 3), 20)
    print(f"\nthree nodes started together: 64 partitions split {nodes.split()} in {took:.2f} s")
    assert nodes.split() == [21, 21, 22]
    # The leases in NATS say the same as the nodes do.
    node = nodes.nodes["a"]
    bucket = await node.client.jetstream().key_value(lease_bucket(nodes.config))
    leases = await read_leases(node.client.jetstream(), bucket, lease_bucket(nodes.config))
    assert {p: lease.owner for p, lease in leases.items()} == {
        p: name for name, owned in nodes.owned().items() for p in owned
    }
    # A node reads the others' leases every renewal interval (1 s here).
    await nodes.until(
        lambda: node.ownership.owners() == {p: lease.owner for p, lease in leases.items()}, 5
    )
    assert set(node.ownership.nodes()) == {"a", "b", "c"}
    assert nodes.record.overlaps == [] and nodes.record.double_gains() == []


@pytest.mark.parametrize("nodes", [6.0], indirect=True, ids=["lease-6s"])
async def test_a_killed_nodes_partitions_move_within_ten_seconds(nodes: Nodes) -> None:
    for name in ("a", "b", "c"):
        await nodes.add(name)
    await nodes.until(lambda: fair(nodes.split(), 3), 30)
    victim = nodes.owned()["c"]
    killed = time.monotonic()
    await nodes.kill("c")
    took = await nodes.until(lambda: fair(nodes.split(), 2), 15)
    moved = {c.partition: c.at - killed for c in nodes.record.gains_after(killed)}
    assert set(moved) >= victim
    first, last = min(moved[p] for p in victim), max(moved[p] for p in victim)
    print(
        f"\nkill of a node holding {len(victim)} partitions (lease 6 s): first taken over "
        f"after {first:.2f} s, all after {last:.2f} s; shares {nodes.split()} after {took:.2f} s"
    )
    assert last < 10.0
    assert nodes.record.overlaps == [] and nodes.record.double_gains() == []


async def test_a_joining_node_takes_its_share_from_the_others(nodes: Nodes) -> None:
    await nodes.add("a")
    await nodes.add("b")
    await nodes.until(lambda: fair(nodes.split(), 2), 20)
    before = nodes.owned()
    joined = time.monotonic()
    await nodes.add("c")
    took = await nodes.until(lambda: fair(nodes.split(), 3), 20)
    print(f"\na third node joined: shares {nodes.split()} after {took:.2f} s")
    taken = nodes.owned()["c"]
    assert taken <= before["a"] | before["b"]
    assert before["a"] & taken and before["b"] & taken
    # Each partition the newcomer got was given up by its old owner first.
    for change in nodes.record.gains_after(joined, "c"):
        losses = [
            c
            for c in nodes.record.changes
            if not c.gained and c.partition == change.partition and joined <= c.at <= change.at
        ]
        assert losses, f"partition {change.partition} gained before it was given up"
    assert nodes.record.overlaps == [] and nodes.record.double_gains() == []


async def test_a_released_node_hands_over_at_once(nodes: Nodes) -> None:
    for name in ("a", "b", "c"):
        await nodes.add(name)
    await nodes.until(lambda: fair(nodes.split(), 3), 20)
    stopped = time.monotonic()
    await nodes.stop("c")
    took = await nodes.until(lambda: fair(nodes.split(), 2), 20)
    print(f"\na drained node released its leases: the others own all after {took:.2f} s")
    # Released leases move at the others' next rounds, well before a lease would expire.
    assert took < SHORT_LEASE
    assert all(c.at >= stopped for c in nodes.record.gains_after(stopped))
    assert nodes.record.overlaps == [] and nodes.record.double_gains() == []


async def test_nats_down_past_the_lease_fences_every_node_then_they_own_again(
    nats_server: NatsServer, nodes: Nodes
) -> None:
    await nodes.add("a")
    await nodes.add("b")
    await nodes.until(lambda: fair(nodes.split(), 2), 20)
    # Every lease was renewed, at the latest, just now: its fence falls at most
    # lease - margin (2/3 of the lease) from here, before the server's TTL could end it.
    down = time.monotonic()
    await nats_server.stop()
    fenced = await nodes.until(lambda: nodes.split() == [] and not any(nodes.owned().values()), 10)
    losses = [c.at - down for c in nodes.record.changes if not c.gained and c.at >= down]
    print(
        f"\nNATS stopped: {len(losses)} partitions fenced between {min(losses):.2f} and "
        f"{max(losses):.2f} s (lease {SHORT_LEASE} s), all after {fenced:.2f} s"
    )
    assert len(losses) == PARTITIONS
    assert max(losses) <= SHORT_LEASE * 2 / 3 + 0.2
    await asyncio.sleep(max(0.0, SHORT_LEASE * 1.5 - (time.monotonic() - down)))
    restarted = time.monotonic()
    await nats_server.start()
    took = await nodes.until(lambda: fair(nodes.split(), 2), 20)
    print(f"NATS back: partitions owned again {took:.2f} s after its restart")
    assert all(c.at >= restarted for c in nodes.record.gains_after(down))
    assert nodes.record.overlaps == [] and nodes.record.double_gains() == []


async def test_a_node_cut_off_from_nats_fences_itself_before_another_takes_over(
    nats_server: NatsServer, nodes: Nodes
) -> None:
    """NATS and node b carry on while node a can't reach NATS: b may take a's partitions
    only once their leases ran out on the server, and a has given each up before that."""
    cutter = Cutter(nats_server.port)
    await cutter.mend()
    await nodes.add("a", cutter.url)
    await nodes.add("b")
    await nodes.until(lambda: fair(nodes.split(), 2), 20)
    cut_off = nodes.owned()["a"]
    cut = time.monotonic()
    await cutter.cut()
    await nodes.until(lambda: nodes.owned()["b"] == frozenset(range(PARTITIONS)), 15)
    lost = {c.partition: c.at - cut for c in nodes.record.changes if c.node == "a" and c.at >= cut}
    taken = {c.partition: c.at - cut for c in nodes.record.gains_after(cut, "b")}
    assert set(lost) == set(taken) == cut_off
    gaps = [taken[p] - lost[p] for p in cut_off]
    print(
        f"\nnode a cut off: fenced its {len(cut_off)} partitions after {max(lost.values()):.2f} s, "
        f"b took them after {min(taken.values()):.2f}-{max(taken.values()):.2f} s "
        f"(at least {min(gaps):.2f} s after a let go)"
    )
    assert min(gaps) > 0
    assert nodes.record.overlaps == [] and nodes.record.double_gains() == []
    # Reconnected, a is a live node again and gets its share back from b.
    await cutter.mend()
    took = await nodes.until(lambda: fair(nodes.split(), 2), 20)
    print(f"node a reconnected: shares {nodes.split()} again after {took:.2f} s")
    assert nodes.record.overlaps == [] and nodes.record.double_gains() == []

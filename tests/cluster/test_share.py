"""Fair shares of the partitions, and which a node takes or gives up (pure)."""

from __future__ import annotations

from forwarder.cluster.share import plan, preference, quota


def test_shares_differ_by_one_at_most_and_add_up() -> None:
    live = ["c", "a", "b"]
    shares = {node: quota(node, live, 64) for node in live}
    assert shares == {"a": 22, "b": 21, "c": 21}
    assert quota("a", ["a"], 64) == 64
    # A node always counts itself, even before its own key shows in the registry.
    assert quota("d", live, 64) == 16
    assert sum(quota(node, map(str, range(7)), 64) for node in map(str, range(7))) == 64
    assert quota("z", ["a", "z"], 1) == 0 and quota("a", ["a", "z"], 1) == 1


def test_nodes_want_the_partitions_in_different_orders() -> None:
    def order(node: str) -> list[int]:
        return sorted(range(64), key=lambda p: preference(node, p), reverse=True)

    assert order("a") != order("b")
    assert order("a")[:8] != order("b")[:8]
    assert preference("a", 3) == preference("a", 3)


def test_a_node_takes_free_partitions_it_wants_most_up_to_its_share() -> None:
    holders = {p: "b" for p in range(0, 64, 2)}
    holders[1] = "a"  # a lease in this node's name it does not hold: free for it
    step = plan("a", 10, mine=[3], holders=holders, partitions=64)
    assert step.release == [] and len(step.take) == 9
    assert all(p % 2 == 1 and p != 3 for p in step.take)
    free = [p for p in range(64) if p % 2 == 1 and p != 3]
    assert step.take == sorted(free, key=lambda p: preference("a", p), reverse=True)[:9]
    # Nothing free: nothing to take, however short of its share a node is.
    assert plan("a", 40, mine=[], holders={p: "b" for p in range(64)}, partitions=64).take == []


def test_a_node_past_its_share_gives_up_the_partitions_it_wants_least() -> None:
    mine = list(range(32))
    step = plan("a", 21, mine=mine, holders={}, partitions=64)
    assert step.take == [] and len(step.release) == 11
    assert step.release == sorted(mine, key=lambda p: preference("a", p))[:11]
    # At its share a node keeps what it has and takes nothing.
    others = {p: "b" for p in range(32, 64)}
    assert plan("a", 32, mine=mine, holders=others, partitions=64) == plan(
        "a", 32, mine=mine, holders={}, partitions=64
    )
    assert plan("a", 32, mine=mine, holders={}, partitions=64).take == []
    assert plan("a", 32, mine=mine, holders={}, partitions=64).release == []

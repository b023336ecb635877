"""Cluster mode end to end: `forwarder run` processes on one NATS and one Redis act as one
forwarder, survive kill -9 of a node and an outage of NATS, and share Iterable's limit."""

from __future__ import annotations

import asyncio
import itertools
import random
import time
from collections.abc import AsyncIterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import aiohttp
import pytest
from aiohttp import web

from forwarder.iterable import Endpoint
from forwarder.sim import SimulatorConfig, SimulatorState, build_simulator_app
from tests.cluster.nodes import IDENTIFY, Cluster, Limits, Spreader, most_in_a_window
from tests.cluster.servers import NatsServer, RedisServer
from tests.harness import eventually, serve

TRACK_BULK = Endpoint.TRACK_BULK.value


def email(user: int) -> str:
    return f"u{user}@example.com"


def user_id(user: int) -> str:
    return f"user-{user:04d}"


def identify(user: int, serial: int) -> dict[str, Any]:
    """An identify giving the user its email and adding 1 to its `logins` counter."""
    return {
        "event_type": IDENTIFY,
        "user_id": user_id(user),
        "insert_id": f"identify-{user}-{serial}",
        "user_properties": {"$set": {"email": email(user), "plan": "pro"}, "$add": {"logins": 1}},
    }


def event(user: int, seq: int, tag: str = "ev") -> dict[str, Any]:
    """An event whose `seq` property gives its place among the user's events (and `n`
    its user)."""
    return {
        "event_type": "Viewed",
        "user_id": user_id(user),
        "insert_id": f"{tag}-{user}-{seq}",
        "event_properties": {"seq": seq, "n": user},
    }


@dataclass
class Simulator:
    state: SimulatorState
    config: SimulatorConfig
    url: str
    runner: web.AppRunner


@pytest.fixture
async def simulator() -> AsyncIterator[Simulator]:
    """Iterable, in this process: 50 requests/s per endpoint unless a test lowers it;
    an event whose user was never updated is refused as not found."""
    config = SimulatorConfig(
        track_bulk_per_second=50, bulk_update_per_second=50, require_user_first=True
    )
    state = SimulatorState()
    runner, url = await serve(build_simulator_app(config, state))
    try:
        yield Simulator(state, config, url, runner)
    finally:
        await runner.cleanup()


@pytest.fixture
async def session() -> AsyncIterator[aiohttp.ClientSession]:
    async with aiohttp.ClientSession() as client:
        yield client


def new_cluster(
    tmp_path: Path,
    nats_server: NatsServer,
    redis_server: RedisServer,
    simulator: Simulator,
    count: int = 3,
    limits: Limits | None = None,
) -> Cluster:
    return Cluster(
        tmp_path,
        nats_url=nats_server.url,
        redis_url=redis_server.url,
        sim_url=simulator.url,
        count=count,
        limits=limits,
    )


async def identify_all(spreader: Spreader, cluster: Cluster, users: range, per: int = 50) -> None:
    """One identify per user, all to node-1, each request answered 200."""
    for start in range(users.start, users.stop, per):
        batch = [identify(user, 0) for user in range(start, min(users.stop, start + per))]
        assert await spreader.post(batch, node=cluster[0]) == 200, cluster.output()


async def all_delivered(
    simulator: Simulator, spreader: Spreader, cluster: Cluster, timeout: float = 60
) -> None:
    try:
        await eventually(lambda: spreader.acknowledged <= simulator.state.event_ids, timeout)
    except AssertionError:
        missing = len(spreader.acknowledged - simulator.state.event_ids)
        raise AssertionError(
            f"{missing} of {len(spreader.acknowledged)} acknowledged events never arrived\n"
            + cluster.output()
        ) from None


async def test_three_nodes_act_as_one_forwarder(
    tmp_path: Path,
    nats_server: NatsServer,
    redis_server: RedisServer,
    simulator: Simulator,
    session: aiohttp.ClientSession,
) -> None:
    cluster = new_cluster(tmp_path, nats_server, redis_server, simulator)
    users, rounds, per_round = range(24), 8, 3
    try:
        await cluster.start()
        spreader = Spreader(session, cluster)
        # Every node owns a share of the partitions: delivery is spread over all three.
        await cluster.wait_owned(session, cluster.nodes, timeout=30, spread=True)

        # The identities (emails) reach node-1 only; the users' events reach only nodes 2
        # and 3, half the users to each per round, switching every round. A user's
        # requests go one after another: its next is sent once the last was answered.
        await identify_all(spreader, cluster, users)
        for round_ in range(rounds):
            halves: list[list[dict[str, Any]]] = [[], []]
            for user in users:
                seqs = range(round_ * per_round, (round_ + 1) * per_round)
                halves[(user + round_) % 2].extend(event(user, seq) for seq in seqs)
            answers = await asyncio.gather(
                spreader.post(halves[0], node=cluster[1]),
                spreader.post(halves[1], node=cluster[2]),
            )
            assert answers == [200, 200], cluster.output()
        await all_delivered(simulator, spreader, cluster)
    finally:
        await cluster.stop()

    state = simulator.state
    assert len(spreader.acknowledged) == len(users) * rounds * per_round
    # Every event carries its user's email, which only node-1 was told.
    by_email: dict[str, list[int]] = {}
    for sent in state.events:
        assert sent.get("email") == email(sent["dataFields"]["n"]), sent
        by_email.setdefault(sent["email"], []).append(sent["dataFields"]["seq"])
    assert set(by_email) == {email(user) for user in users}
    # Each user existed at Iterable before its first event: the simulator refuses (and
    # counts as failed) an event of a user never updated.
    assert not state.failed, state.failed
    # Per-user order: each user's events arrived in the order they were sent, once each.
    expected = list(range(rounds * per_round))
    for address, seqs in by_email.items():
        assert seqs == expected, f"{address}: {seqs}"
    for user in users:
        assert state.profile(email=email(user)) == {"plan": "pro", "logins": 1}
    assert state.rate_limited == 0


async def test_kill_9_of_a_node_under_load_loses_nothing_and_moves_its_partitions(
    tmp_path: Path,
    nats_server: NatsServer,
    redis_server: RedisServer,
    simulator: Simulator,
    session: aiohttp.ClientSession,
) -> None:
    # Iterable answers in 0.2 s: the node killed has requests in flight, and items queued.
    simulator.config.latency_ms = 200
    cluster = new_cluster(tmp_path, nats_server, redis_server, simulator)
    users = range(40)
    load_seconds, kill_at, requests_per_second, clients = 15.0, 5.0, 50, 5
    identifies = {user: 0 for user in users}
    identify_statuses: list[int | None] = []
    moved_after: list[float] = []
    try:
        await cluster.start()
        spreader = Spreader(session, cluster)
        await identify_all(spreader, cluster, users)
        for user in users:
            identifies[user] += 1
        await cluster.wait_owned(session, cluster.nodes, timeout=30, spread=True)
        started = time.monotonic()
        stop_at = started + load_seconds

        async def events_client(index: int) -> None:
            rng = random.Random(index)
            serial = 0
            # Bounded: one request per tick until stop_at.
            while time.monotonic() < stop_at:
                tick = time.monotonic()
                batch = [event(rng.choice(users), serial + k, tag=f"c{index}") for k in range(10)]
                serial += 10
                await spreader.post(batch)
                pause = clients / requests_per_second - (time.monotonic() - tick)
                await asyncio.sleep(max(0.0, pause))

        async def identify_client() -> None:
            # node-1 is never killed, so every identify is answered: the count of those
            # answered 200 is exactly how many `$add`s each user's counter must show.
            rng = random.Random(99)
            serial = 1
            while time.monotonic() < stop_at:
                user = rng.choice(users)
                status = await spreader.post([identify(user, serial)], node=cluster[0])
                identify_statuses.append(status)
                if status == 200:
                    identifies[user] += 1
                serial += 1
                await asyncio.sleep(0.1)

        async def killer() -> None:
            await asyncio.sleep(kill_at)
            await cluster[2].kill()
            moved_after.append(await cluster.wait_owned(session, cluster.nodes[:2], timeout=10))

        await asyncio.gather(
            killer(), identify_client(), *(events_client(c) for c in range(clients))
        )
        await all_delivered(simulator, spreader, cluster)

        def counters_match() -> bool:
            for user in users:
                profile = simulator.state.profile(email=email(user)) or {}
                if profile.get("logins") != identifies[user]:
                    return False
            return True

        await eventually(counters_match, timeout=30)
        await asyncio.sleep(2)  # a second `$add` of one identify would show by now
    finally:
        await cluster.stop()

    state = simulator.state
    assert moved_after and moved_after[0] <= 10, moved_after
    assert set(identify_statuses) == {200}, identify_statuses
    for user in users:
        profile = state.profile(email=email(user)) or {}
        assert profile.get("logins") == identifies[user], (user, profile, identifies[user])
    # Under load for the whole run, and the killed node's requests failed only in flight.
    assert len(spreader.acknowledged) >= load_seconds * requests_per_second * 10 / 2
    assert spreader.unanswered <= clients
    assert state.rate_limited == 0, state.stats()["requests"]
    received = [sent["id"] for sent in state.events]
    assert spreader.acknowledged <= set(received)
    print(
        f"partitions moved {moved_after[0]:.1f} s after kill -9; "
        f"{len(spreader.acknowledged)} events acknowledged, {len(received)} received, "
        f"{len(received) - len(set(received))} sent again, statuses {spreader.statuses}"
    )


async def test_nodes_share_iterables_rate_limit(
    tmp_path: Path,
    nats_server: NatsServer,
    redis_server: RedisServer,
    simulator: Simulator,
    session: aiohttp.ClientSession,
) -> None:
    rate = 10
    simulator.config.track_bulk_per_second = rate
    limits = Limits(track_bulk_per_second=rate, max_events_per_request=100)
    cluster = new_cluster(tmp_path, nats_server, redis_server, simulator, limits=limits)
    users, requests, per_request = range(300), 160, 100
    try:
        await cluster.start()
        spreader = Spreader(session, cluster)
        await cluster.wait_owned(session, cluster.nodes, timeout=30, spread=True)
        await identify_all(spreader, cluster, users, per=100)
        await eventually(lambda: len(simulator.state.people) == len(users), timeout=30)

        # A backlog on every node: 16,000 events of 300 users, at least 160 requests of
        # 100, over 16 s at Iterable's 10 a second.
        rng = random.Random(3)
        bodies = [
            [event(rng.choice(users), n * per_request + k) for k in range(per_request)]
            for n in range(requests)
        ]

        async def poster(part: list[list[dict[str, Any]]]) -> None:
            for body in part:
                for _ in range(100):  # bounded resends of a 429
                    if await spreader.post(body) == 200:
                        break
                    await asyncio.sleep(0.1)

        await asyncio.gather(*(poster(bodies[c::4]) for c in range(4)))
        posted_at = time.monotonic()
        assert len(spreader.acknowledged) == requests * per_request
        await all_delivered(simulator, spreader, cluster, timeout=90)
        sent_by = [
            await requests_sent(session, node.admin_url, TRACK_BULK) for node in cluster.nodes
        ]
    finally:
        await cluster.stop()

    state = simulator.state
    times = [r.at for r in state.requests if r.endpoint == TRACK_BULK]
    start = min(times)
    refused = [round(r.at - start, 2) for r in state.requests if r.status == 429]
    # A request that came late (a node descheduled past its slot) shows as a long gap
    # then a short one; the window ending at the short one holds one too many.
    squeezed = [(round(b - start, 2), round(b - a, 3)) for a, b in itertools.pairwise(times)]
    assert not refused, (
        f"429s at {refused} s from the first trackBulk; the backlog was posted by "
        f"{posted_at - start:.2f} s; (arrival, gap) of requests that came < 90 ms after "
        f"the one before: {[pair for pair in squeezed if pair[1] < 0.09]}"
    )
    assert most_in_a_window(times) <= rate
    assert state.max_requests_in_one_second[TRACK_BULK] <= rate
    # The three took turns: each sent part of the backlog.
    assert all(sent > 0 for sent in sent_by), sent_by
    used = (len(times) - 1) / (max(times) - min(times))
    assert used >= 0.9 * rate, f"{used:.2f} trackBulk requests/s of {rate}"
    print(f"trackBulk {used:.2f} requests/s of {rate} over {len(times)}; per node {sent_by}")


async def requests_sent(session: aiohttp.ClientSession, admin_url: str, endpoint: str) -> float:
    """A node's requests to `endpoint`, every answer, from its /metrics."""
    async with session.get(admin_url + "/metrics") as response:
        text = await response.text()
    total = 0.0
    for line in text.splitlines():
        if line.startswith("forwarder_sync_iterable_requests_total{") and (
            f'endpoint="{endpoint}"' in line
        ):
            total += float(line.rsplit(" ", 1)[1])
    return total


async def test_nats_outage_answers_429_and_recovers(
    tmp_path: Path,
    nats_server: NatsServer,
    redis_server: RedisServer,
    simulator: Simulator,
    session: aiohttp.ClientSession,
) -> None:
    cluster = new_cluster(tmp_path, nats_server, redis_server, simulator, count=2)
    users = range(20)
    # (sent at, answered at, status) of every request.
    answers: list[tuple[float, float, int | None]] = []
    try:
        await cluster.start()
        spreader = Spreader(session, cluster)
        await cluster.wait_owned(session, cluster.nodes, timeout=30, spread=True)
        await identify_all(spreader, cluster, users)
        done = asyncio.Event()

        async def light_load() -> None:
            serial = 0
            for _ in range(1000):  # bounded; 10 requests/s until the test is done
                if done.is_set():
                    return
                sent = time.monotonic()
                batch = [event(serial % len(users), serial, tag="light")]
                serial += 1
                status = await spreader.post(batch)
                answers.append((sent, time.monotonic(), status))
                await asyncio.sleep(0.1)

        load = asyncio.create_task(light_load())
        await asyncio.sleep(3)
        await nats_server.stop()
        down_at = time.monotonic()
        await asyncio.sleep(10)
        back_at = time.monotonic()
        await nats_server.start()

        def recovered() -> bool:
            return any(sent >= back_at and status == 200 for sent, _, status in answers)

        await eventually(recovered, timeout=15)
        recovered_after = next(
            end - back_at for sent, end, status in answers if sent >= back_at and status == 200
        )
        await asyncio.sleep(2)
        done.set()
        await asyncio.wait_for(load, 20)
        await all_delivered(simulator, spreader, cluster)
    finally:
        await cluster.stop()

    statuses = [status for _, _, status in answers]
    assert all(status in (200, 429) for status in statuses), spreader.statuses
    while_down = [status for sent, end, status in answers if sent >= down_at and end <= back_at]
    assert len(while_down) >= 20, while_down
    assert set(while_down) == {429}, while_down
    assert recovered_after <= 10, recovered_after
    print(f"200 again {recovered_after:.1f} s after NATS came back; {len(while_down)} 429s")

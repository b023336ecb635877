"""The cluster status: the section built from nodes, leases and lag, and the command."""

from __future__ import annotations

import asyncio
import json
import sys
from collections.abc import AsyncIterator
from pathlib import Path

import pytest

from forwarder.cluster.buckets import NodeAdvert
from forwarder.cluster.status import cluster_section, render_table
from forwarder.cluster.stream import ensure_stream
from tests.cluster.ownership import PARTITIONS, Nodes
from tests.cluster.servers import NatsServer
from tests.processes import ROOT, free_port


def test_the_section_counts_owners_and_lag_and_lists_unowned_partitions() -> None:
    section = cluster_section(
        node="a",
        stream="FORWARDER",
        partitions=4,
        nodes={"b": NodeAdvert(started_at=2.0), "a": NodeAdvert(1.0, "127.0.0.1:9180")},
        owners={0: "a", 1: "b", 2: "a"},
        lags={0: 5, 1: 0, 3: 7},
    )
    assert section["node"] == "a" and section["nodes_alive"] == 2
    assert list(section["nodes"]) == ["a", "b"]
    assert section["nodes"]["a"]["partitions_owned"] == 2
    assert section["nodes"]["a"]["admin_listen"] == "127.0.0.1:9180"
    assert section["nodes"]["b"]["partitions_owned"] == 1
    assert section["unowned"] == [3]
    assert section["lag_total"] == 12
    assert section["partitions"][2] == {"partition": 2, "owner": "a", "lag": None}
    assert section["partitions"][3] == {"partition": 3, "owner": None, "lag": 7}
    table = render_table(section).splitlines()
    assert (
        table[0] == "stream FORWARDER: 2 node(s) alive, 4 partitions (3 owned), lag 12 message(s)"
    )
    assert table[3].split()[:3] == ["a", "2", "127.0.0.1:9180"]
    assert table[-1].split() == ["3", "(none)", "7"]
    assert table[-2].split() == ["2", "a", "-"]


async def _status(config: Path, *flags: str) -> tuple[int, str, str]:
    process = await asyncio.create_subprocess_exec(
        sys.executable,
        "-m",
        "forwarder.cli",
        "cluster",
        "status",
        "--config",
        str(config),
        *flags,
        cwd=ROOT,
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
    )
    out, err = await asyncio.wait_for(process.communicate(), 60)
    assert process.returncode is not None
    return process.returncode, out.decode(), err.decode()


def _config(tmp_path: Path, url: str | None) -> Path:
    path = tmp_path / "config.toml"
    cluster = f'\n[cluster]\nnats_url = "{url}"\nnode = "operator"\n' if url else ""
    path.write_text(f'[server]\napi_keys = ["k"]\n{cluster}')
    return path


@pytest.fixture
async def nodes(nats_server: NatsServer) -> AsyncIterator[Nodes]:
    group = Nodes(nats_server.url, 3.0)
    try:
        yield group
    finally:
        await group.close()


async def test_the_command_shows_nodes_owners_and_lag(
    nats_server: NatsServer, nodes: Nodes, tmp_path: Path
) -> None:
    config = _config(tmp_path, nats_server.url)
    code, _, err = await _status(config)
    assert code == 1 and "stream FORWARDER does not exist yet" in err
    assert "disconnected" not in err  # the command's own words only, not the client's log
    a = await nodes.add("a")
    await nodes.add("b")
    js = a.client.jetstream()
    await ensure_stream(js, nodes.config)
    await nodes.until(lambda: sorted(map(len, nodes.owned().values())) == [32, 32], 20)
    # Partition 3: three messages and no consumer. Partition 5: four messages, a consumer
    # that has taken two without acknowledging them.
    for n in range(3):
        await js.publish("forwarder.events.3", b"m%d" % n)
    for n in range(4):
        await js.publish("forwarder.events.5", b"m%d" % n)
    pull = await js.pull_subscribe("forwarder.events.5", durable="p5", stream="FORWARDER")
    assert len(await pull.fetch(2, timeout=5)) == 2

    code, out, err = await _status(config, "--json")
    assert code == 0, err
    section = json.loads(out)
    assert section["node"] is None and section["nodes_alive"] == 2
    assert {name: n["partitions_owned"] for name, n in section["nodes"].items()} == {
        "a": 32,
        "b": 32,
    }
    owners = {row["partition"]: row["owner"] for row in section["partitions"]}
    assert owners == {p: name for name, owned in nodes.owned().items() for p in owned}
    lags = {row["partition"]: row["lag"] for row in section["partitions"]}
    assert lags[3] == 3 and lags[5] == 4 and section["lag_total"] == 7
    assert section["unowned"] == []

    code, out, err = await _status(config)
    assert code == 0, err
    lines = out.splitlines()
    assert lines[0] == (
        f"stream FORWARDER: 2 node(s) alive, {PARTITIONS} partitions ({PARTITIONS} owned), "
        "lag 7 message(s)"
    )
    assert lines[-PARTITIONS + 5].split() == ["5", owners[5], "4"]


async def test_the_command_refuses_without_a_cluster_or_a_nats(tmp_path: Path) -> None:
    code, _, err = await _status(_config(tmp_path, None))
    assert code == 2 and "has no [cluster] table" in err
    # A free port: no server listens there.
    code, _, err = await _status(_config(tmp_path, f"nats://127.0.0.1:{free_port()}"))
    assert code == 1 and "no NATS server answered" in err

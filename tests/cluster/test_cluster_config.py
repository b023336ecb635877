"""The [cluster] table: absent is embedded mode; present, its defaults and key-path errors."""

from __future__ import annotations

import socket
import tomllib
from typing import Any

import msgspec
import pytest

from forwarder.config import ClusterConfig, ConfigError, load_config, parse_config, summarize
from tests.processes import ROOT


def parse(cluster: dict[str, Any] | None) -> Any:
    raw: dict[str, Any] = {"server": {"api_keys": ["k"]}}
    if cluster is not None:
        raw["cluster"] = cluster
    return parse_config(raw, env={})


def test_no_cluster_table_is_embedded_mode() -> None:
    assert parse(None).cluster is None
    assert load_config(ROOT / "config.toml", env={}).cluster is None


def test_defaults_are_the_design() -> None:
    cluster = parse({}).cluster
    assert cluster.node == socket.gethostname()
    assert cluster.nats_servers == ["nats://127.0.0.1:4222"]
    assert (cluster.partitions, cluster.stream, cluster.replicas) == (64, "FORWARDER", 1)
    assert cluster.subject_prefix == "forwarder"
    assert cluster.max_stream_bytes == 10_000_000_000
    assert (cluster.lease_seconds, cluster.publish_timeout_seconds) == (6.0, 5.0)


def test_nats_url_takes_a_string_or_a_list() -> None:
    assert parse({"nats_url": "nats://a:4222"}).cluster.nats_servers == ["nats://a:4222"]
    servers = ["nats://a:4222", "tls://b:4222"]
    assert parse({"nats_url": servers}).cluster.nats_servers == servers


@pytest.mark.parametrize(
    ("cluster", "error"),
    [
        ({"partitions": 0}, "cluster.partitions: must be 1..1024, got 0"),
        ({"partitions": 1025}, "cluster.partitions: must be 1..1024, got 1025"),
        ({"nats_url": []}, "cluster.nats_url: at least one NATS server URL is required"),
        ({"nats_url": "localhost:4222"}, "cluster.nats_url: expected a URL starting with nats://"),
        ({"nats_url": ["nats://a:1", "http://b"]}, "cluster.nats_url[1]: expected a URL"),
        ({"nats_url": 4222}, "cluster.nats_url: expected str | array, got int"),
        ({"redis_url": "http://r"}, "cluster.redis_url: expected a URL starting with redis://"),
        ({"node": "my node"}, "cluster.node: use letters, digits"),
        ({"node": ""}, "cluster.node: use letters, digits"),
        ({"stream": "events.x"}, "cluster.stream: use letters, digits, '-' or '_'"),
        ({"replicas": 0}, "cluster.replicas: must be 1..5, got 0"),
        ({"lease_seconds": 0.5}, "cluster.lease_seconds: must be at least 1, got 0.5"),
        ({"publish_timeout_seconds": 0}, "cluster.publish_timeout_seconds: must be greater than 0"),
        ({"max_stream_bytes": -1}, "cluster.max_stream_bytes: must be greater than 0"),
        ({"partitons": 8}, "cluster.partitons: unknown key"),
    ],
)
def test_errors_name_the_key_path(cluster: dict[str, Any], error: str) -> None:
    with pytest.raises(ConfigError) as caught:
        parse(cluster)
    assert str(caught.value).startswith(error)


def test_errors_and_summary_never_show_a_password() -> None:
    with pytest.raises(ConfigError) as caught:
        parse({"redis_url": "http://user:hunter2@r:1"})
    assert "hunter2" not in str(caught.value)
    config = parse({"nats_url": "nats://u:hunter2@n:4222", "redis_url": "redis://:hunter2@r:1/0"})
    summary = summarize(config)
    assert "hunter2" not in summary
    assert "cluster node" in summary and "nats://n:4222" in summary and "redis://r:1/0" in summary


def test_the_shipped_example_is_valid_once_uncommented() -> None:
    text = (ROOT / "config.toml").read_text()
    start = text.index("# [cluster]")
    end = text.index("[[syncs]]", start)
    lines = []
    for line in text[start:end].splitlines():
        body = line.removeprefix("# ")
        # The example's settings are the commented lines that parse as TOML keys.
        if body == "[cluster]" or ("=" in body and body.split("=")[0].strip().isidentifier()):
            lines.append(body)
    table = tomllib.loads("\n".join(lines))
    # Every knob is in the example, and the example is a valid config.
    assert set(table["cluster"]) == {info.name for info in msgspec.structs.fields(ClusterConfig)}
    cluster = parse(table["cluster"]).cluster
    assert cluster.nats_servers == ["nats://127.0.0.1:4222"] and cluster.node == "forwarder-1"

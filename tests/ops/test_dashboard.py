"""deploy/grafana-dashboard.json and deploy/alerts.yml name only metrics the daemon exports."""

from __future__ import annotations

import json
import re
from pathlib import Path
from typing import Any

import aiohttp
import yaml
from prometheus_client.parser import text_string_to_metric_families

from forwarder.sim import SimulatorConfig, SimulatorState, build_simulator_app
from tests.harness import Daemon, eventually, iterable_id, make_config, post_events, serve
from tests.processes import ROOT

DASHBOARD = ROOT / "deploy" / "grafana-dashboard.json"
ALERTS = ROOT / "deploy" / "alerts.yml"
# Series Prometheus makes itself for every target, not read from /metrics.
SCRAPE_SERIES = frozenset({"up"})
# PromQL words that look like names: binary operators, modifiers and the number words.
KEYWORDS = frozenset(
    {"and", "or", "unless", "bool", "offset", "inf", "nan", "group_left", "group_right"}
)
GROUPING = re.compile(r"\b(?:by|without|on|ignoring|group_left|group_right)\s*\([^)]*\)")
IDENTIFIER = re.compile(r"(?<![\w.$])[a-zA-Z_:][a-zA-Z0-9_:]*")


def metric_names(expr: str) -> set[str]:
    """The series names a PromQL expression reads: identifiers that are not a function
    call, a keyword, a label (in {...} or a grouping) or inside a range ([...])."""
    expr = re.sub(r'"(?:[^"\\]|\\.)*"', '""', expr)
    expr = re.sub(r"\{[^}]*\}", "", expr)
    expr = re.sub(r"\[[^\]]*\]", "", expr)
    expr = GROUPING.sub("", expr)
    names = set()
    for match in IDENTIFIER.finditer(expr):
        name = match.group()
        if name.lower() in KEYWORDS or expr[match.end() :].lstrip().startswith("("):
            continue
        names.add(name)
    return names


def _panels(panels: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Every panel, the ones inside collapsed rows too."""
    found = []
    for panel in panels:
        found.append(panel)
        found.extend(_panels(panel.get("panels", [])))
    return found


def dashboard_names() -> dict[str, set[str]]:
    """Metric names by where the dashboard uses them (panel title or variable name)."""
    dashboard = json.loads(DASHBOARD.read_text())
    used: dict[str, set[str]] = {}
    for panel in _panels(dashboard["panels"]):
        if panel["type"] == "row":
            continue
        exprs = [target["expr"] for target in panel["targets"]]
        assert exprs, f"panel {panel['title']!r} has no query"
        used[panel["title"]] = set().union(*(metric_names(e) for e in exprs))
    for variable in dashboard["templating"]["list"]:
        if variable["type"] == "query":
            query = variable["query"]["query"]
            (name,) = re.findall(r"label_values\(\s*([a-zA-Z_:][\w:]*)", query)
            used["$" + variable["name"]] = {name}
    return used


def alert_names() -> dict[str, set[str]]:
    rules = yaml.safe_load(ALERTS.read_text())
    used: dict[str, set[str]] = {}
    for group in rules["groups"]:
        for rule in group["rules"]:
            assert rule["labels"]["severity"] in {"critical", "warning"}, rule["alert"]
            assert rule["annotations"]["summary"], rule["alert"]
            used[rule["alert"]] = metric_names(rule["expr"])
    return used


def test_metric_names_finds_series_and_skips_functions_labels_and_ranges() -> None:
    expr = (
        'sum by (sync, le) (rate(a_total{job="x", sync=~"$sync"}[$__rate_interval])) '
        '/ on (instance) group_left b > 0.8 or absent(up{job="f"}) and c offset 5m > 1e3'
    )
    assert metric_names(expr) == {"a_total", "b", "up", "c"}


async def test_every_metric_the_dashboard_and_alerts_read_is_exported(tmp_path: Path) -> None:
    dashboard, alerts = dashboard_names(), alert_names()
    # What an operator asked to see, each on some panel and some alert.
    for needed in (
        "forwarder_events_total",
        "forwarder_http_request_duration_seconds_bucket",
        "forwarder_sync_items_forwarded_total",
        "forwarder_sync_dead_letters_total",
        "forwarder_sync_retries_total",
        "forwarder_sync_queue_items",
        "forwarder_sync_paused",
        "forwarder_sync_iterable_responses_total",
        "forwarder_sync_upstream_latency_seconds_bucket",
        "forwarder_journal_bytes",
        "forwarder_journal_lag_records",
        "forwarder_storage_unavailable",
        "process_cpu_seconds_total",
        "process_resident_memory_bytes",
        "process_open_fds",
    ):
        assert any(needed in names for names in dashboard.values()), needed
    for needed in (
        "forwarder_sync_paused",
        "forwarder_sync_dead_letters_total",
        "forwarder_journal_max_bytes",
        "forwarder_storage_unavailable",
        "forwarder_sync_queue_max_items",
        "up",
    ):
        assert any(needed in names for names in alerts.values()), needed

    exported = await _scrape_after_traffic(tmp_path)
    missing = {
        f"{where}: {name}"
        for where, names in {**dashboard, **alerts}.items()
        for name in names
        if name not in exported and name not in SCRAPE_SERIES
    }
    assert not missing, sorted(missing)


async def _scrape_after_traffic(tmp_path: Path) -> set[str]:
    """Sample names on the admin /metrics of a journaled daemon that accepted, refused,
    skipped, forwarded and dead-lettered something."""
    state = SimulatorState()
    runner, sim_url = await serve(build_simulator_app(SimulatorConfig(), state))
    config = make_config(tmp_path, sim_url, durability="journal", events={"select": ["Buy"]})
    daemon = await Daemon(config).start()
    try:
        async with aiohttp.ClientSession() as session:
            bought = {"event_type": "Buy", "user_id": "user-00001", "insert_id": "b1"}
            events = [
                {
                    "event_type": "$identify",
                    "user_id": "user-00001",
                    "user_properties": {"$set": {"email": "a@x.io"}},
                },
                {
                    "event_type": "$identify",
                    "user_id": "user-00002",
                    "user_properties": {"$set": {"email": "b@invalid.test"}},
                },
                bought,
                {"event_type": "Viewed", "user_id": "user-00001", "insert_id": "v1"},
            ]
            assert (await post_events(session, daemon.url, events))[0] == 200
            assert (await post_events(session, daemon.url, [{"event_type": "x"}]))[0] == 400
            await eventually(lambda: iterable_id(bought) in state.event_ids)
            assert await daemon.pipeline.drain(10)
            async with session.get(daemon.admin_url + "/metrics") as response:
                assert response.status == 200
                text = await response.text()
    finally:
        await daemon.drain_and_stop()
        await runner.cleanup()
    return {
        sample.name for family in text_string_to_metric_families(text) for sample in family.samples
    }

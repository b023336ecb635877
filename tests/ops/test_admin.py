"""The admin listener: operator routes on their own port, none of them on the ingest port."""

from __future__ import annotations

from pathlib import Path

import aiohttp

from forwarder.sim import SimulatorConfig, build_simulator_app
from tests.harness import Daemon, make_config, post_events, serve


async def _status(session: aiohttp.ClientSession, method: str, url: str) -> int:
    async with session.request(method, url) as response:
        await response.read()
        return response.status


async def test_operator_routes_answer_on_the_admin_port_and_404_on_ingest(tmp_path: Path) -> None:
    runner, sim_url = await serve(build_simulator_app(SimulatorConfig()))
    daemon = await Daemon(make_config(tmp_path, sim_url)).start()
    try:
        assert daemon.admin_url != daemon.url
        async with aiohttp.ClientSession() as session:
            for path in ("/metrics", "/status"):
                assert await _status(session, "GET", daemon.url + path) == 404, path
                assert await _status(session, "GET", daemon.admin_url + path) == 200, path
            for path in ("/healthz", "/readyz"):
                assert await _status(session, "GET", daemon.url + path) == 200, path
                assert await _status(session, "GET", daemon.admin_url + path) == 200, path
            # Ingest stays on the public port: the admin port takes no events.
            assert await _status(session, "POST", daemon.admin_url + "/2/httpapi") == 404
            status, _ = await post_events(
                session, daemon.url, [{"event_type": "E", "user_id": "user-00001"}]
            )
            assert status == 200
            async with session.get(daemon.admin_url + "/metrics") as response:
                text = await response.text()
            assert 'forwarder_events_total{outcome="accepted"} 1.0' in text
            # A scrape is no ingest request: the public port's request counts leave it out.
            assert 'route="/metrics"' not in text
    finally:
        assert await daemon.drain_and_stop()
        await runner.cleanup()

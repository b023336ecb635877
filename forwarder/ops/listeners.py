"""A running daemon's ports and watchdog: the ingest and admin listeners, opened before
recovery and closed after the drain, the same in embedded and cluster mode."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Callable, Iterator

from aiohttp import web

from forwarder.config import ServerConfig
from forwarder.errors import ListenError
from forwarder.ingest.app import STATE_KEY, IngestState
from forwarder.ingest.connections import GuardedAppRunner, raise_file_limit
from forwarder.ops import systemd
from forwarder.ops.admin import serve_admin


@contextlib.contextmanager
def binding(address: str) -> Iterator[None]:
    """A failed bind (in use, no permission) as a ListenError naming the address."""
    try:
        yield
    except OSError as error:
        raise ListenError(address, error) from None


class Listeners:
    """Both ports and the systemd watchdog. Open before recovery, so /healthz answers and
    /readyz says "not yet"; both stay up through the drain."""

    def __init__(
        self,
        server: ServerConfig,
        ingest: GuardedAppRunner,
        admin: web.AppRunner,
        state: IngestState,
    ) -> None:
        self.server = server
        self.state = state
        self._ingest = ingest
        self._admin = admin
        self._watchdog: asyncio.Task[None] | None = None
        interval = systemd.watchdog_interval()
        if interval is not None:
            self._watchdog = asyncio.create_task(systemd.watchdog_loop(interval), name="watchdog")

    @classmethod
    async def open(
        cls,
        server: ServerConfig,
        ingest_app: web.Application,
        admin_app: Callable[[IngestState], web.Application],
    ) -> Listeners:
        """Serve `ingest_app` on `listen` and the admin app (built around the ingest
        state, so /readyz agrees on both ports) on `admin_listen`; ListenError when a
        port can't be bound, with nothing left open."""
        raise_file_limit(server.max_connections)
        runner = GuardedAppRunner(
            ingest_app,
            server,
            access_log=None,
            handle_signals=False,
            shutdown_timeout=server.shutdown_timeout_seconds,
        )
        await runner.setup()
        state = ingest_app[STATE_KEY]
        try:
            with binding(server.listen):
                await web.TCPSite(runner, server.host, server.port, reuse_address=True).start()
            with binding(server.admin_listen):
                admin = await serve_admin(admin_app(state), server)
        except BaseException:
            await runner.cleanup()
            raise
        return cls(server, runner, admin, state)

    def ready(self) -> None:
        self.state.ready = True

    def stop_taking(self) -> None:
        """Readiness off and new ingest answered 429 (clients retry elsewhere or later)
        while the ports stay up; systemd hears how long the drain may take."""
        server = self.server
        systemd.stopping(server.drain_timeout_seconds + server.shutdown_timeout_seconds)
        self.state.ready = False
        self.state.accepting = False

    async def close(self) -> None:
        await self._ingest.cleanup()
        await self._admin.cleanup()
        if self._watchdog is not None:
            self._watchdog.cancel()

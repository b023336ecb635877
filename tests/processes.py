"""The daemon as a subprocess (`forwarder run`), for tests where kill -9, RSS, file limits
or exit statuses matter."""

from __future__ import annotations

import asyncio
import os
import resource
import signal
import socket
import sys
import time
import tomllib
from pathlib import Path

import aiohttp

ROOT = Path(__file__).resolve().parent.parent


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def listen_lines(port: int) -> str:
    """A test config's `[server]` addresses: ingest on `port`, admin on a free port of its
    own (never 9180: another daemon, or another test, may hold it)."""
    return f'listen = "127.0.0.1:{port}"\nadmin_listen = "127.0.0.1:{free_port()}"'


class DaemonProcess:
    """`forwarder run --config CONFIG`, ready once /readyz answers 200 (20 s at most)."""

    def __init__(
        self,
        config: Path,
        port: int,
        env: dict[str, str] | None = None,
        log_level: str | None = None,
        file_limit: int | None = None,
    ) -> None:
        self.port = port
        self.url = f"http://127.0.0.1:{port}"
        self.log = config.parent / f"daemon-{time.monotonic_ns()}.log"
        self.env = {**os.environ, "ITERABLE_KEY": "iterable-secret-key-0123456789", **(env or {})}
        self.config = config
        self.log_level = log_level
        # Open files allowed to the child, soft and hard, like a production host's.
        self.file_limit = file_limit
        self.process: asyncio.subprocess.Process | None = None

    async def start(self) -> DaemonProcess:
        self._log_file = open(self.log, "wb")
        level = ["--log-level", self.log_level] if self.log_level else []
        self.process = await asyncio.create_subprocess_exec(
            sys.executable,
            "-m",
            "forwarder",
            "run",
            "--config",
            str(self.config),
            *level,
            cwd=ROOT,
            env=self.env,
            stdout=self._log_file,
            stderr=self._log_file,
            preexec_fn=self._limit_files if self.file_limit is not None else None,
        )
        async with aiohttp.ClientSession() as session:
            deadline = time.monotonic() + 20
            while time.monotonic() < deadline:
                try:
                    async with session.get(self.url + "/readyz") as response:
                        ready = response.status == 200
                    if ready:
                        # Up before recovery, so it answers by now; on the config's port.
                        async with session.get(self.admin_url + "/healthz") as response:
                            assert response.status == 200, self.log.read_text()
                        return self
                except aiohttp.ClientError:
                    pass
                assert self.process.returncode is None, self.log.read_text()
                await asyncio.sleep(0.05)
        raise AssertionError("daemon did not get ready: " + self.log.read_text())

    @property
    def admin_url(self) -> str:
        """Where /metrics and /status answer: the config's [server] admin_listen."""
        server = tomllib.loads(self.config.read_text()).get("server", {})
        admin = server.get("admin_listen")
        assert admin, f"{self.config} has no admin_listen: write [server] with listen_lines()"
        return f"http://{admin}"

    def _limit_files(self) -> None:
        assert self.file_limit is not None
        resource.setrlimit(resource.RLIMIT_NOFILE, (self.file_limit, self.file_limit))

    async def wait(self, timeout: float) -> int:
        assert self.process is not None
        code = await asyncio.wait_for(self.process.wait(), timeout)
        self._log_file.close()
        return code

    async def stop(self) -> None:
        """SIGTERM, then kill -9 past 15 s."""
        if self.process is not None and self.process.returncode is None:
            self.process.send_signal(signal.SIGTERM)
            try:
                await asyncio.wait_for(self.process.wait(), 15)
            except TimeoutError:
                self.process.kill()
                await self.process.wait()
        self._log_file.close()

    def peak_rss_mb(self) -> float:
        """VmHWM: the most resident memory the daemon ever had."""
        assert self.process is not None
        status = Path(f"/proc/{self.process.pid}/status").read_text()
        line = next(line for line in status.splitlines() if line.startswith("VmHWM:"))
        return int(line.split()[1]) / 1024

    def output(self) -> str:
        return self.log.read_text()

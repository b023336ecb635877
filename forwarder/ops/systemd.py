"""sd_notify without libsystemd: READY=1, STATUS=, EXTEND_TIMEOUT_USEC=, WATCHDOG=1, STOPPING=1."""

from __future__ import annotations

import asyncio
import logging
import os
import socket
import time
from collections.abc import Callable

log = logging.getLogger("forwarder.systemd")

# Each EXTEND_TIMEOUT_USEC= gives the start this much more time from when systemd reads it
# (TimeoutStartSec is 90 s by default); progress messages go about once a second, so a
# start that stops making progress still times out soon after.
EXTEND_SECONDS = 30.0


def notify(message: str, environ: dict[str, str] | None = None) -> bool:
    """Send one notification; False (and nothing else) when not run by systemd."""
    env = os.environ if environ is None else environ
    address = env.get("NOTIFY_SOCKET")
    if not address:
        return False
    if address.startswith("@"):  # an abstract socket
        address = "\0" + address[1:]
    try:
        with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM) as sock:
            sock.connect(address)
            sock.sendall(message.encode())
        return True
    except OSError as error:
        log.warning("cannot notify systemd: %s", error)
        return False


def watchdog_interval(environ: dict[str, str] | None = None) -> float | None:
    """Half of WATCHDOG_USEC in seconds (systemd's advice), when the watchdog is on for us."""
    env = os.environ if environ is None else environ
    usec = env.get("WATCHDOG_USEC")
    pid = env.get("WATCHDOG_PID")
    if not usec or (pid and pid != str(os.getpid())):
        return None
    try:
        return max(0.05, int(usec) / 2_000_000)
    except ValueError:
        return None


# Beyond the drain and the connections' grace: the checkpoint and the profile flush.
STOP_MARGIN_SECONDS = 30.0


def stopping(drain_seconds: float) -> None:
    """STOPPING=1, then the time the drain (and the connections' grace) may take: past
    TimeoutStopSec, systemd waits for it rather than killing a drain that is still
    sending (EXTEND_TIMEOUT_USEC never shortens the unit's own timeout)."""
    notify("STOPPING=1")
    extend_usec = int((drain_seconds + STOP_MARGIN_SECONDS) * 1_000_000)
    notify(f"STATUS=draining for up to {drain_seconds:g} s\nEXTEND_TIMEOUT_USEC={extend_usec}")


async def watchdog_loop(interval: float) -> None:
    """Ping the watchdog while the event loop runs; a stuck loop stops the pings."""
    while True:
        notify("WATCHDOG=1")
        await asyncio.sleep(interval)


class StartupProgress:
    """STATUS= and EXTEND_TIMEOUT_USEC= at most once per `interval` while the journal replays.

    Its methods are called per segment and per record, from the journal's thread and then
    the event loop (one after the other); they cost a clock read when nothing is due.
    """

    def __init__(
        self,
        interval: float = 1.0,
        extend_seconds: float = EXTEND_SECONDS,
        send: Callable[[str], bool] = notify,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.interval = interval
        self.extend_usec = int(extend_seconds * 1_000_000)
        self._send = send
        self._clock = clock
        self._next = clock() + interval  # short starts send nothing before READY=1

    def _due(self) -> bool:
        now = self._clock()
        if now < self._next:
            return False
        self._next = now + self.interval
        return True

    def _status(self, status: str) -> None:
        self._send(f"STATUS={status}\nEXTEND_TIMEOUT_USEC={self.extend_usec}")

    def reading(self, done_bytes: int, total_bytes: int) -> None:
        """The journal's segments read and scanned so far."""
        if self._due():
            mib = 1 << 20
            self._status(
                f"reading journal: {done_bytes // mib} of {total_bytes // mib} MiB scanned"
            )

    def replaying(self, done: int, total: int) -> None:
        """Records replayed into profiles and delivery queues so far."""
        if self._due():
            self._status(f"replaying journal: {done} of {total} records")

    def ready(self, status: str) -> None:
        """The status line, then READY=1 on its own (one datagram each)."""
        self._send(f"STATUS=ready: {status}")
        self._send("READY=1")

"""sd_notify without libsystemd: READY=1, WATCHDOG=1 and STOPPING=1 over NOTIFY_SOCKET."""

from __future__ import annotations

import asyncio
import logging
import os
import socket

log = logging.getLogger("forwarder.systemd")


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


async def watchdog_loop(interval: float) -> None:
    """Ping the watchdog while the event loop runs; a stuck loop stops the pings."""
    while True:
        notify("WATCHDOG=1")
        await asyncio.sleep(interval)

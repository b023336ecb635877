"""Headless Chromium driven over the DevTools protocol, with bounded waits throughout."""

from __future__ import annotations

import asyncio
import itertools
import json
import shutil
import tempfile
import time
from pathlib import Path
from types import TracebackType
from typing import Any

import aiohttp

CHROMIUM = Path("/usr/bin/chromium")
# The closed network refuses Chromium's own background connections; without these flags
# it keeps retrying them. A fresh profile keeps one run's cookies out of the next.
FLAGS = [
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--disable-dev-shm-usage",
    "--remote-debugging-port=0",
]


class BrowserError(AssertionError):
    """Chromium did not start, a command failed, or a page script threw."""


class Chromium:
    """One headless Chromium and its first tab, spoken to over the DevTools websocket."""

    def __init__(self, timeout: float = 30.0) -> None:
        self.timeout = timeout
        self.console: list[str] = []  # the page's console lines and uncaught errors
        self._profile = Path(tempfile.mkdtemp(prefix="forwarder-chromium-"))
        self._process: asyncio.subprocess.Process | None = None
        self._session: aiohttp.ClientSession | None = None
        self._socket: aiohttp.ClientWebSocketResponse | None = None
        self._reader: asyncio.Task[None] | None = None
        self._ids = itertools.count(1)
        self._pending: dict[int, asyncio.Future[dict[str, Any]]] = {}
        self._events: asyncio.Queue[dict[str, Any]] = asyncio.Queue()

    async def __aenter__(self) -> Chromium:
        self._process = await asyncio.create_subprocess_exec(
            str(CHROMIUM),
            *FLAGS,
            f"--user-data-dir={self._profile}",
            "about:blank",
            stdout=asyncio.subprocess.DEVNULL,
            stderr=asyncio.subprocess.DEVNULL,
        )
        port = await self._debugging_port()
        self._session = aiohttp.ClientSession()
        async with self._session.get(f"http://127.0.0.1:{port}/json/list") as response:
            targets = await response.json()
        (page,) = [t for t in targets if t["type"] == "page"]
        self._socket = await self._session.ws_connect(page["webSocketDebuggerUrl"], max_msg_size=0)
        self._reader = asyncio.create_task(self._read())
        await self.send("Page.enable")
        await self.send("Runtime.enable")
        return self

    async def __aexit__(
        self,
        kind: type[BaseException] | None,
        error: BaseException | None,
        traceback: TracebackType | None,
    ) -> None:
        try:
            if self._socket is not None and not self._socket.closed:
                await asyncio.wait_for(self.send("Browser.close"), 5)
        except (BrowserError, TimeoutError, ConnectionError):
            pass
        finally:
            if self._reader is not None:
                self._reader.cancel()
            if self._session is not None:
                await self._session.close()
            if self._process is not None:
                try:
                    await asyncio.wait_for(self._process.wait(), 10)
                except TimeoutError:
                    self._process.kill()
                    await self._process.wait()
            shutil.rmtree(self._profile, ignore_errors=True)

    async def _debugging_port(self) -> int:
        """Chromium writes its chosen port to DevToolsActivePort in the profile."""
        assert self._process is not None
        marker = self._profile / "DevToolsActivePort"
        deadline = time.monotonic() + self.timeout
        while time.monotonic() < deadline:
            if self._process.returncode is not None:
                raise BrowserError(f"chromium exited with {self._process.returncode}")
            if marker.exists():
                first = marker.read_text().split("\n", 1)[0]
                if first.isdigit():
                    return int(first)
            await asyncio.sleep(0.05)
        raise BrowserError(f"chromium wrote no DevToolsActivePort in {self.timeout} s")

    async def _read(self) -> None:
        assert self._socket is not None
        async for message in self._socket:
            if message.type != aiohttp.WSMsgType.TEXT:
                break
            data = json.loads(message.data)
            future = self._pending.pop(data.get("id", -1), None)
            if future is not None and not future.done():
                future.set_result(data)
            elif "method" in data:
                self._note(data)
                await self._events.put(data)
        for future in self._pending.values():
            if not future.done():
                future.set_exception(BrowserError("DevTools connection closed"))

    def _note(self, event: dict[str, Any]) -> None:
        params = event.get("params", {})
        if event["method"] == "Runtime.consoleAPICalled":
            args = " ".join(str(a.get("value", a.get("description", ""))) for a in params["args"])
            self.console.append(f"console.{params['type']}: {args}")
        elif event["method"] == "Runtime.exceptionThrown":
            details = params["exceptionDetails"]
            description = details.get("exception", {}).get("description", details.get("text"))
            self.console.append(f"uncaught: {description}")

    async def send(self, method: str, **params: Any) -> dict[str, Any]:
        """One DevTools command; its result, or BrowserError with the protocol's error."""
        assert self._socket is not None
        command_id = next(self._ids)
        future: asyncio.Future[dict[str, Any]] = asyncio.get_running_loop().create_future()
        self._pending[command_id] = future
        await self._socket.send_str(
            json.dumps({"id": command_id, "method": method, "params": params})
        )
        answer = await asyncio.wait_for(future, self.timeout)
        if "error" in answer:
            raise BrowserError(f"{method}: {answer['error']}")
        result: dict[str, Any] = answer["result"]
        return result

    async def wait_for_event(self, method: str) -> dict[str, Any]:
        deadline = time.monotonic() + self.timeout
        while (left := deadline - time.monotonic()) > 0:
            try:
                event = await asyncio.wait_for(self._events.get(), left)
            except TimeoutError:
                break
            if event["method"] == method:
                return event
        raise BrowserError(f"no {method} within {self.timeout} s; console: {self.console}")

    async def open(self, url: str) -> None:
        """Navigate the tab and wait for the page's load event."""
        while not self._events.empty():  # a load event of the page before must not count
            self._events.get_nowait()
        answer = await self.send("Page.navigate", url=url)
        if "errorText" in answer:
            raise BrowserError(f"cannot open {url}: {answer['errorText']}")
        await self.wait_for_event("Page.loadEventFired")

    async def evaluate(self, expression: str) -> Any:
        """Run `expression` in the page, await it if a promise, and return its JSON value."""
        answer = await self.send(
            "Runtime.evaluate", expression=expression, awaitPromise=True, returnByValue=True
        )
        if "exceptionDetails" in answer:
            details = answer["exceptionDetails"]
            description = details.get("exception", {}).get("description", details.get("text"))
            raise BrowserError(f"page script failed: {description}; console: {self.console}")
        return answer["result"].get("value")

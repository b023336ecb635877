"""Publishing to JetStream with one future per message for its acknowledgement (PubAck).

nats-py's own publish_async leaves the future unresolved when JetStream answers with an
error (its reply handler raises instead of setting it: nats-py 2.16), so a full stream
would look like a timeout; and `js.publish` per message costs a task, a timer and a
request each. This keeps one reply subscription and resolves every future itself.
"""

from __future__ import annotations

import asyncio
import itertools

import msgspec
from nats.aio.client import Client as NATS
from nats.aio.msg import Msg
from nats.js.errors import APIError, NoStreamResponseError

# The status header NATS puts on the reply when no stream takes the subject.
_STATUS = "Status"
_NO_RESPONDERS = "503"


class _ApiError(msgspec.Struct):
    code: int = 0
    err_code: int = 0
    description: str = ""


class _PubAck(msgspec.Struct):
    """JetStream's answer to a publish: the stored message's place, or an error."""

    stream: str = ""
    seq: int = 0
    error: _ApiError | None = None


_decoder = msgspec.json.Decoder(_PubAck)


class AckedPublisher:
    """Publishes messages with a reply subject of its own; each `publish` returns a future
    that resolves to the stream sequence JetStream stored the message at, or fails with
    NoStreamResponseError / APIError (nats-py's classes). Messages go out in the order of
    the calls. A caller that stops waiting cancels its futures; a late answer is dropped."""

    def __init__(self, nc: NATS) -> None:
        self._nc = nc
        self._prefix = ""
        self._tokens = itertools.count()
        self._waiting: dict[str, asyncio.Future[int]] = {}
        self._subscribing: asyncio.Lock | None = None

    @property
    def waiting(self) -> int:
        """Publishes not answered yet (nor given up on). Done futures leave the table on
        the loop's next turn (their callback), so they are not counted."""
        return sum(1 for future in self._waiting.values() if not future.done())

    async def publish(self, subject: str, body: bytes) -> asyncio.Future[int]:
        """Send one message (raises nats' error when it can't be sent); its ack's future."""
        if not self._prefix:
            await self._subscribe()
        token = str(next(self._tokens))
        future: asyncio.Future[int] = asyncio.get_running_loop().create_future()
        self._waiting[token] = future
        future.add_done_callback(lambda _: self._waiting.pop(token, None))
        try:
            await self._nc.publish(subject, body, reply=self._prefix + token)
        except BaseException:
            future.cancel()
            raise
        return future

    async def _subscribe(self) -> None:
        if self._subscribing is None:
            self._subscribing = asyncio.Lock()
        async with self._subscribing:
            if self._prefix:
                return
            prefix = self._nc.new_inbox() + "."
            # nats-py subscribes again by itself after a reconnect.
            await self._nc.subscribe(prefix + "*", cb=self._answered)
            self._prefix = prefix

    async def _answered(self, msg: Msg) -> None:
        future = self._waiting.get(msg.subject[len(self._prefix) :])
        if future is None or future.done():
            return  # given up on (timed out, cancelled)
        if msg.headers and msg.headers.get(_STATUS) == _NO_RESPONDERS:
            future.set_exception(NoStreamResponseError())
            return
        try:
            ack = _decoder.decode(msg.data)
        except msgspec.DecodeError:
            future.set_exception(APIError(description=f"not a PubAck: {msg.data[:200]!r}"))
            return
        if ack.error is not None:
            error = ack.error
            future.set_exception(
                APIError(code=error.code, err_code=error.err_code, description=error.description)
            )
        else:
            future.set_result(ack.seq)

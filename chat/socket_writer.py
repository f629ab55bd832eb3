"""A socket's output: in order, batched, held while a frame is in hand, capped.

The only chat module that writes to the transport: WebSocket frames are built by the
runtime (voiceflow.runtime.frames) and offered to the server through its two ASGI
extensions.
"""

import asyncio
import logging
from collections import deque
from collections.abc import Callable, Coroutine
from typing import Any

import orjson

from voiceflow import metrics
from voiceflow.runtime.frames import FRAME_EXTENSION, OUTPUT_EXTENSION, text_frame

logger = logging.getLogger(__name__)

CLOSE_OVERFLOW = 1013


def start_eagerly(coro: Coroutine) -> asyncio.Future | None:
    """Run `coro` until it first waits: None if it finished, else a Task ending it."""
    # Python 3.12's eager tasks, by hand: a broadcast's write to a socket whose buffer
    # has room completes without a task or a trip through the event loop.
    try:
        waiting = coro.send(None)
    except StopIteration:
        return None
    return asyncio.ensure_future(_resume(coro, waiting))


async def _resume(coro, waiting):
    """Drive `coro`, suspended on `waiting` (a future, or None for a bare yield)."""
    try:
        while True:
            if waiting is None:
                await asyncio.sleep(0)
            else:
                # As a Task does with what a coroutine yields: a future still marked
                # blocking refuses another await ("await wasn't used with future").
                waiting._asyncio_future_blocking = False
                try:
                    await waiting
                except Exception:
                    pass  # the coroutine sees the outcome when it resumes
            waiting = coro.send(None)
    except StopIteration as finished:
        return finished.value
    finally:
        coro.close()


class SocketWriter:
    """Writes one socket's frames: its own replies and the broadcasts it gets."""

    # Broadcasts wait while a frame is in hand (so `joined` comes before the room's
    # live messages) or while the socket's write buffer is full. Past the soft cap of
    # output its client has not read, ephemeral events are shed; past the hard cap the
    # socket closes with 1013 (its client recovers by seq).

    __slots__ = (
        "base_send",
        "frame_queue",
        "output_bytes",
        "soft_bytes",
        "hard_bytes",
        "holds",
        "pending",
        "pending_bytes",
        "close_code",
        "user_id",
        "connection_id",
    )

    def __init__(
        self,
        base_send: Callable[[dict], Coroutine],
        extensions: dict,
        soft_bytes: int,
        hard_bytes: int,
    ) -> None:
        self.base_send = base_send
        # The server's batched writes and its count of unread output, if it has them.
        self.frame_queue = extensions.get(FRAME_EXTENSION)
        self.output_bytes = extensions.get(OUTPUT_EXTENSION)
        self.soft_bytes = soft_bytes
        self.hard_bytes = hard_bytes
        self.holds = 0
        self.pending: deque | None = None
        self.pending_bytes = 0  # the size of `pending`
        self.close_code: int | None = None  # set once a close is on its way
        self.user_id: int | None = None  # for the overflow's log line
        self.connection_id: str | None = None

    def closing(self, code: int | None) -> None:
        """A close with `code` is on its way: nothing more is written after it."""
        if self.close_code is None:
            self.close_code = code

    async def send_frame(self, frame: dict[str, Any]) -> None:
        """Send one of this socket's own frames (a reply)."""
        metrics.frames_sent(frame["type"])
        data = orjson.dumps(frame)
        # Prebuilt, through the server's batched writes where it offers them: no
        # framing by websockets, and the frame leaves with the socket's others of
        # this loop turn (an ack with its own message's broadcast). Else, or when the
        # socket cannot take it now (closing, buffer full), an ASGI send as before.
        if (
            self.frame_queue is not None
            and self.close_code is None
            and self.frame_queue(text_frame(data))
        ):
            return
        await self.send_text(data.decode())

    async def send_text(self, text: str) -> None:
        """An ASGI send of `text`; dropped once the socket is closing or gone."""
        if self.close_code is not None:
            # Closed by us (e.g. 4408): uvicorn raises on a send after close.
            return
        try:
            await self.base_send({"type": "websocket.send", "text": text})
        except OSError:
            # The client left while this frame was on its way (uvicorn raises
            # ClientDisconnected): its disconnect event is queued and comes next.
            logger.debug("send to a closed socket dropped")

    def hold(self) -> None:
        """A frame is in hand: broadcasts wait until `release`."""
        self.holds += 1

    def release(self) -> None:
        """The frame in hand is handled: what waited goes out."""
        self.holds -= 1
        self._pending_send()

    def deliver(self, text: str, frame: bytes, ephemeral: str | None = None) -> None:
        """Write a broadcast (its text and prebuilt frame) now, or once it may."""
        # Past the soft cap of unread output, `ephemeral` events (their type: typing,
        # presence) are dropped; past the hard cap the socket closes with 1013 and its
        # client recovers by seq. O(1): the server's count plus `pending_bytes`.
        if self.close_code is not None:
            return  # closed by us: uvicorn raises on a send after close
        queued = self.pending_bytes  # as queued_bytes(), inline: once per delivery
        if self.output_bytes is not None:
            queued += self.output_bytes()
        if queued > self.soft_bytes:
            if ephemeral is not None:
                metrics.SOCKET_SHED.labels(ephemeral).inc()
                return
            if queued + len(frame) > self.hard_bytes:
                self._overflow_close(queued)
                return
        if self.holds:
            if self.pending is None:
                self.pending = deque()
            self.pending.append((text, frame))
            self.pending_bytes += len(frame)
        elif self.frame_queue is None or not self.frame_queue(frame):
            self._send(text)

    def queued_bytes(self) -> int:
        """This socket's output its client has not read yet (for /health)."""
        queued = self.pending_bytes
        if self.output_bytes is not None:
            queued += self.output_bytes()
        return queued

    def _overflow_close(self, queued):
        self.close_code = CLOSE_OVERFLOW  # from here on, nothing more is queued
        self.pending = None
        self.pending_bytes = 0
        metrics.SOCKET_OVERFLOW_CLOSED.inc()
        logger.info(
            "socket overflow",
            extra={
                "event": "socket_overflow",
                "user_id": self.user_id,
                "connection_id": self.connection_id,
                "bytes": queued,
            },
        )
        asyncio.ensure_future(self._close_overflowing())

    async def _close_overflowing(self):
        # Not between frames (as a kick): the frame in hand may itself be waiting
        # for room in the buffer, which the close releases.
        try:
            await self.base_send({"type": "websocket.close", "code": CLOSE_OVERFLOW})
        except OSError:
            pass  # the client left meanwhile: its disconnect event comes next

    def _write(self, text, frame):
        # The server's batched writes when it offers them, else an ASGI send.
        if self.frame_queue is None or not self.frame_queue(frame):
            self._send(text)

    def _send(self, text):
        try:
            writing = start_eagerly(
                self.base_send({"type": "websocket.send", "text": text})
            )
        except Exception:
            # The client left (uvicorn raises ClientDisconnected): its disconnect
            # event is queued and comes next.
            return
        if writing is not None:  # the socket's write buffer is full: keep order
            self.holds += 1
            writing.add_done_callback(self._written)

    def _written(self, writing):
        self.holds -= 1
        if not writing.cancelled() and writing.exception() is not None:
            logger.debug("broadcast to a closed socket dropped")
        self._pending_send()

    def _pending_send(self):
        while not self.holds and self.pending:
            if self.close_code is not None:
                self.pending = None
                self.pending_bytes = 0
                return
            text, frame = self.pending.popleft()
            self.pending_bytes -= len(frame)
            self._write(text, frame)
        if not self.pending:
            self.pending = None

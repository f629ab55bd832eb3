"""The server closing a socket: drained at shutdown, kicked, or silent too long."""

import asyncio
import logging
from typing import Any, Protocol

from .socket_presence import SocketPresence

logger = logging.getLogger(__name__)

CLOSE_RESTARTING = 1012
CLOSE_KICKED = 4403
CLOSE_SILENT = 4408

# Seconds: how early a silence timer may fire and still be on time.
_CLOCK_SLACK = 0.002


class Closable(Protocol):
    """What closing needs of a socket (the chat consumer)."""

    user: Any
    connection_id: str
    presence: SocketPresence
    # Held while one event is handled: a close between frames never cuts an ack off.
    dispatching: asyncio.Lock
    released: bool
    draining: bool
    # Its silence timer (silence_watch); None once the socket is closing.
    silence_timer: asyncio.TimerHandle | None

    async def close(self, code: int | None = None, reason: str | None = None) -> None:
        """Send the close frame."""


async def drain(socket: Closable) -> None:
    """Server shutdown: after the frame in hand, leave presence and close with 1012."""
    # Leaving is a normal disconnect: the grace period runs (in the sweep if this
    # process is gone by then), and the client reconnects elsewhere.
    async with socket.dispatching:
        if socket.released or socket.draining:
            return
        socket.draining = True
        await socket.presence.end()
        await socket.close(code=CLOSE_RESTARTING)


async def kick(socket: Closable) -> None:
    """A moderator kicked the user: close with 4403 between frames."""
    logger.info(
        "socket kicked",
        extra={
            "event": "socket_kicked",
            "user_id": socket.user and socket.user.pk,
            "connection_id": socket.connection_id,
        },
    )
    async with socket.dispatching:  # between frames, like a drain
        await socket.close(code=CLOSE_KICKED)


def silence_watch(socket: Closable) -> None:
    """Close with 4408 once no frame came for the dead timeout, from now on.

    One timer per socket, due when it would be dead: a frame only records its time
    (SocketPresence.heard), and a timer that finds a frame came meanwhile is set
    again for the new moment. So a socket costs one timer per dead timeout, however
    many frames it sends, and nothing looks at the sockets that are not due.
    """
    loop = asyncio.get_running_loop()
    due = socket.presence.silent_at()
    if due is not None:
        socket.silence_timer = loop.call_at(due, _silence_due, socket, loop)


def silence_unwatch(socket: Closable) -> None:
    """The socket is closing: no more silence timer."""
    timer, socket.silence_timer = socket.silence_timer, None
    if timer is not None:
        timer.cancel()


def _silence_due(socket: Closable, loop: asyncio.AbstractEventLoop) -> None:
    socket.silence_timer = None
    due = socket.presence.silent_at()
    if due is None:  # left presence: closing already
        return
    # A timer may fire a little early (the loop's clock has millisecond steps): due
    # within that is due.
    if due - loop.time() > _CLOCK_SLACK:  # a frame came meanwhile
        socket.silence_timer = loop.call_at(due, _silence_due, socket, loop)
        return
    asyncio.ensure_future(_close_silent(socket))


async def _close_silent(socket):
    # A dead client may never answer the close: leave presence first.
    await socket.presence.end()
    await socket.close(code=CLOSE_SILENT)

"""The server closing a socket: drained at shutdown, kicked, or silent too long."""

import asyncio
import logging
from typing import Any, Protocol

from .socket_presence import SocketPresence

logger = logging.getLogger(__name__)

CLOSE_RESTARTING = 1012
CLOSE_KICKED = 4403
CLOSE_SILENT = 4408


class Closable(Protocol):
    """What closing needs of a socket (the chat consumer)."""

    user: Any
    connection_id: str
    presence: SocketPresence
    # Held while one event is handled: a close between frames never cuts an ack off.
    dispatching: asyncio.Lock
    released: bool
    draining: bool
    silenced: bool

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


def silence_check(socket: Closable, now: float) -> None:
    """Close with 4408 once no frame came for the dead timeout (the hub's timer)."""
    if not socket.silenced and socket.presence.silent(now):
        socket.silenced = True
        asyncio.ensure_future(_close_silent(socket))


async def _close_silent(socket):
    # A dead client may never answer the close: leave presence first.
    await socket.presence.end()
    await socket.close(code=CLOSE_SILENT)

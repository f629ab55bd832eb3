"""The web process's WebSocket protocol: uvicorn's, plus broadcast frames in bulk.

A room's broadcast reaches every local member in the same loop turn. Through ASGI each
copy is one `websocket.send`: a coroutine, a frame built for that socket, and one
`send()` system call, which on loopback also runs the receiver's side of TCP. Here the
frame is built once per process (`text_frame`), queued on each socket with the
`voiceflow.frame` ASGI extension, and what a socket got in one loop turn leaves in one
write. Everything else (handshake, acks, pings, closes) is uvicorn's.
"""

import logging
import struct

from uvicorn.protocols.websockets.websockets_sansio_impl import (
    WebSocketsSansIOProtocol,
)
from websockets.protocol import State

FRAME_EXTENSION = "voiceflow.frame"

logger = logging.getLogger(__name__)


def text_frame(data):
    """A final, unmasked text frame carrying `data` (UTF-8 bytes), as servers send."""
    size = len(data)
    if size < 126:
        header = bytes((0x81, size))
    elif size < 65536:
        header = struct.pack("!BBH", 0x81, 126, size)
    else:
        header = struct.pack("!BBQ", 0x81, 127, size)
    return header + data


_batched = []  # protocols holding frames to write at the end of this loop turn
_flush_loop = None  # the loop whose turn-end flush is scheduled


def _flush_all():
    global _flush_loop
    _flush_loop = None
    protocols = _batched[:]
    _batched.clear()
    for protocol in protocols:
        try:
            protocol.broadcast_flush()
        except Exception:  # one broken transport must not hold up the other sockets
            logger.exception("writing broadcast frames to a socket failed")


class BatchingWebSocketProtocol(WebSocketsSansIOProtocol):
    """uvicorn's sans-I/O protocol; its scope offers `voiceflow.frame`, a callable
    taking a prebuilt frame that returns False when the socket cannot take it now
    (not open, or its write buffer is full): send it with `websocket.send` then."""

    broadcast_batch = None  # broadcast frames queued this loop turn

    def handle_connect(self, event):
        super().handle_connect(event)
        scope = getattr(self, "scope", None)
        if scope is not None:  # None: the handshake was refused
            scope["extensions"][FRAME_EXTENSION] = self.broadcast_queue

    def broadcast_queue(self, frame):
        """Queue `frame` to leave with the socket's other frames of this loop turn."""
        if not self.writable.is_set() or not self._open():
            return False
        if self.broadcast_batch is None:
            self.broadcast_batch = [frame]
            global _flush_loop
            loop = self.loop
            if _flush_loop is not loop:  # also when a closed loop left one pending
                _batched.clear()
                _flush_loop = loop
                loop.call_soon(_flush_all)
            _batched.append(self)
        else:
            self.broadcast_batch.append(frame)
        return True

    def broadcast_flush(self):
        """Write the queued frames in one go (dropped if the socket closed since)."""
        frames = self.broadcast_batch
        if frames is None:
            return
        self.broadcast_batch = None
        if self._open():  # else, as `websocket.send` on a closed socket: dropped
            self.transport.write(frames[0] if len(frames) == 1 else b"".join(frames))

    def _open(self):
        # OPEN from the accept until a close frame goes either way (or the handshake
        # was refused); the transport closes when the client is gone.
        return self.conn.state is State.OPEN and not self.transport.is_closing()

    async def send(self, message):
        # What was queued before this send goes out before it: one order per socket.
        self.broadcast_flush()
        await super().send(message)
        if message["type"] == "websocket.accept":
            # uvicorn keeps the handshake's request and response, headers and all, as
            # long as the socket lives; nothing reads them after the accept.
            self.request = self.response = None

    def shutdown(self):
        self.broadcast_flush()
        super().shutdown()

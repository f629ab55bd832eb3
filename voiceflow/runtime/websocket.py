"""The web process's WebSocket protocol: uvicorn's, plus broadcast frames in bulk.

A room's broadcast reaches every local member in the same loop turn. Through ASGI each
copy is one `websocket.send`: a coroutine, a frame built for that socket, and one
`send()` system call, which on loopback also runs the receiver's side of TCP. Here the
frame is built once per process (`text_frame`), queued on each socket with the
`voiceflow.frame` ASGI extension, and what a socket got in one loop turn leaves in one
write; the chat consumer sends its own frames (acks, pongs) the same way. On the way
in, whole text frames from the client (nearly all of them) are unmasked and handed
to the app here, without websockets' generator-based parser. Everything else
(handshake, pings, fragments, closes, bad frames, sends to a full buffer) is
uvicorn's, except that a close never waits behind output the client is not reading
(see `send`), a send after the server closed the socket itself is dropped, and a pong
waiting behind client frames the app has not taken yet is not taken for silence (see
`keepalive_timeout`).

Per socket it also keeps less: uvicorn's asyncio.Queue and Event cost four deques
(~3 KB) where a list and a future do, and the handshake's headers (~2 KB, kept alive
by websockets' parser) are dropped once the scope has its copy. A closed socket, and
the HTTP protocol it was upgraded from, are freed by refcounting at once, not left to
the cycle collector (`_release`, `UpgradingHttpProtocol`). And it leaves out the log
lines uvicorn and websockets make per socket (`[accepted]`, "connection open",
"connection closed"): chat logs `socket_connected` (or `socket_refused`) and
`socket_disconnected` with the user and client instead.
"""

import logging
import struct

from uvicorn.protocols.http.httptools_impl import HttpToolsProtocol
from uvicorn.protocols.websockets.websockets_sansio_impl import (
    WebSocketsSansIOProtocol,
)
from websockets.protocol import Protocol, State
from websockets.speedups import apply_mask
from websockets.streams import StreamReader

from voiceflow.runtime import runtime

FRAME_EXTENSION = "voiceflow.frame"
OUTPUT_EXTENSION = "voiceflow.output_bytes"
# Most bytes of frames queued on one socket in one loop turn (the transport's default
# high-water mark): past it they go through `websocket.send`, which waits for room.
BATCH_BYTES_MAX = 65536
# Client text frames the app may have waiting before reading pauses until it takes
# them all: a client at a normal pace never pauses and resumes its socket's reads.
RECEIVE_QUEUE_MAX = 4

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


# websockets' parser between two frames: Protocol.parse() waiting in at_eof().
_PARSE_CODE = Protocol.parse.__code__
_AT_EOF_CODE = StreamReader.at_eof.__code__
_TEXT_FIN = 0x81  # FIN set, no RSV bits, opcode TEXT
_MASKED = 0x80


def _flush_all(batched):
    """Write the frames of each protocol in `batched` (its Runtime's list of those
    holding frames for the end of this loop turn)."""
    protocols = batched[:]
    batched.clear()
    for protocol in protocols:
        try:
            protocol.broadcast_flush()
        except Exception:  # one broken transport must not hold up the other sockets
            logger.exception("writing broadcast frames to a socket failed")


class _ReceiveQueue:
    """The part of asyncio.Queue uvicorn uses (one reader), without its deques."""

    __slots__ = ("loop", "items", "waiter")

    def __init__(self, loop):
        self.loop = loop
        self.items = []  # a few events at most: reading pauses past RECEIVE_QUEUE_MAX
        self.waiter = None

    def put_nowait(self, item):
        self.items.append(item)
        if self.waiter is not None and not self.waiter.done():
            self.waiter.set_result(None)

    async def get(self):
        while not self.items:
            self.waiter = self.loop.create_future()
            try:
                await self.waiter
            finally:
                self.waiter = None
        return self.items.pop(0)

    def empty(self):
        return not self.items

    def qsize(self):
        return len(self.items)


class _Flag:
    """The part of asyncio.Event uvicorn uses (`writable`), without its deque."""

    __slots__ = ("loop", "flag", "waiters")

    def __init__(self, loop):
        self.loop = loop
        self.flag = False
        self.waiters = None  # a list only while a send waits for the buffer to drain

    def is_set(self):
        return self.flag

    def set(self):
        self.flag = True
        waiters, self.waiters = self.waiters, None
        for waiter in waiters or ():
            if not waiter.done():
                waiter.set_result(True)

    def clear(self):
        self.flag = False

    async def wait(self):
        if self.flag:
            return True
        waiter = self.loop.create_future()
        if self.waiters is None:
            self.waiters = []
        self.waiters.append(waiter)
        try:
            return await waiter
        finally:
            if self.waiters is not None and waiter in self.waiters:
                self.waiters.remove(waiter)


class _HandshakeLog:
    """uvicorn.error without the lines it would make per socket: uvicorn's
    `[accepted]`, websockets' "connection open" and "connection closed"."""

    PER_SOCKET = frozenset({"connection open", "connection closed"})

    def __init__(self, logger):
        self.logger = logger

    def __getattr__(self, name):
        return getattr(self.logger, name)

    def info(self, msg, *args, **kwargs):
        # Dropped before a record is made: a filter would drop it after.
        if msg not in self.PER_SOCKET and not msg.endswith("[accepted]"):
            self.logger.info(msg, *args, **kwargs)


_handshake_log = _HandshakeLog(logging.getLogger("uvicorn.error"))


class BatchingWebSocketProtocol(WebSocketsSansIOProtocol):
    """uvicorn's sans-I/O protocol; its scope offers `voiceflow.frame`, a callable
    taking a prebuilt frame that returns False when the socket cannot take it now
    (not open, its write buffer full, or BATCH_BYTES_MAX queued this turn): send it
    with `websocket.send` then; and
    `voiceflow.output_bytes`, a callable returning the bytes written to the socket
    that the client has not taken yet (this turn's frames and the transport's buffer).
    """

    broadcast_batch = None  # broadcast frames queued this loop turn
    batch_bytes = 0  # their size
    app_running = False  # the app's task for this socket has not returned yet

    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        # The loop's protocols holding frames for the end of this turn: its Runtime's.
        self.batched = runtime().batched
        self.logger = self.conn.logger = _handshake_log
        self.queue = _ReceiveQueue(self.loop)
        self.writable = _Flag(self.loop)
        self.writable.set()
        # The largest text frame data_received passes on itself; websockets refuses
        # larger ones (1009).
        limits = [self.conn.max_message_size, self.conn.max_fragment_size]
        self.max_frame = min((n for n in limits if n is not None), default=1 << 63)

    def handle_connect(self, event):
        super().handle_connect(event)
        scope = getattr(self, "scope", None)
        if scope is not None:  # None: the handshake was refused
            self.app_running = True
            scope["extensions"][FRAME_EXTENSION] = self.broadcast_queue
            scope["extensions"][OUTPUT_EXTENSION] = self.output_bytes
            # websockets' parser keeps the request alive as long as the socket; the
            # scope has a copy of the headers, and the response is built already.
            event.headers.clear()

    async def run_asgi(self):
        try:
            await super().run_asgi()
        finally:
            self.app_running = False
            self._release()

    def connection_lost(self, exc):
        super().connection_lost(exc)
        self._release()

    def _release(self):
        """Break the socket's reference cycles once the client is gone and the app
        has returned, so refcounting frees it."""
        # The scope's extensions are methods of this protocol, and websockets' parser
        # is a generator of its connection. Left to the collector, a socket that
        # lived through a collection waits for a full one: with the server's
        # thresholds, many minutes of churn.
        if self.app_running or not self.disconnected:
            return
        scope = getattr(self, "scope", None)
        if scope is not None:
            scope["extensions"].pop(FRAME_EXTENSION, None)
            scope["extensions"].pop(OUTPUT_EXTENSION, None)
        self.conn.parser.close()

    def data_received(self, data):
        """Whole, masked, final text frames go straight to the app; the rest (the
        handshake, control frames, fragments, deflate, a frame cut by the read, any
        error) to websockets' parser, which sees the stream from where this left off.
        """
        if not self._between_frames():
            super().data_received(data)
            return
        size = len(data)
        start = 0
        while start < size:
            if data[start] != _TEXT_FIN or size - start < 6:
                break
            length = data[start + 1] ^ _MASKED  # the mask bit must be set
            if length < 126:
                begin = start + 6
            elif length == 126 and size - start >= 8:
                length = (data[start + 2] << 8) | data[start + 3]
                begin = start + 8
            else:
                break  # unmasked, 8-byte length, or cut: websockets says what
            end = begin + length
            if end > size or length > self.max_frame:
                break
            try:
                text = apply_mask(data[begin:end], data[begin - 4 : begin]).decode()
            except UnicodeDecodeError:
                break  # websockets' parser and uvicorn close with 1007
            start = end
            if self.close_sent:
                continue  # as uvicorn: past `websocket.close`, frames are dropped
            queue = self.queue
            queue.put_nowait({"type": "websocket.receive", "text": text})
            if queue.qsize() >= RECEIVE_QUEUE_MAX and not self.read_paused:
                self.read_paused = True
                self.transport.pause_reading()
        if start < size:
            super().data_received(data[start:] if start else data)

    def _between_frames(self):
        conn = self.conn
        if conn.state is not State.OPEN or conn.current_size is not None:
            return False
        if conn.extensions or conn.reader.buffer:
            return False
        # The server's parse() (the handshake, then Protocol.parse) delegates to
        # Protocol.parse, which waits in at_eof() only between frames.
        parsing = conn.parser.gi_yieldfrom
        if parsing is None or parsing.gi_code is not _PARSE_CODE:
            return False
        waiting = parsing.gi_yieldfrom
        return waiting is not None and waiting.gi_code is _AT_EOF_CODE

    def broadcast_queue(self, frame):
        """Queue `frame` to leave with the socket's other frames of this loop turn."""
        if not self.writable.flag:
            return False
        batch = self.broadcast_batch
        if batch is None:
            if not self._open():
                return False
            self.broadcast_batch = [frame]
            batched = self.batched
            if not batched:  # the first this turn: the flush is not scheduled yet
                self.loop.call_soon(_flush_all, batched)
            batched.append(self)
        elif self.batch_bytes >= BATCH_BYTES_MAX:
            return False
        else:
            # Open when the batch began this turn; one closed since is dropped by
            # the flush, as a closed socket's frames always are.
            batch.append(frame)
        self.batch_bytes += len(frame)
        return True

    def broadcast_flush(self):
        """Write the queued frames in one go (dropped if the socket closed since)."""
        frames = self.broadcast_batch
        if frames is None:
            return
        self.broadcast_batch = None
        self.batch_bytes = 0
        # As `_open`; else, as `websocket.send` on a closed socket: dropped.
        if self.conn.state is State.OPEN and not self.transport.is_closing():
            self.transport.write(frames[0] if len(frames) == 1 else b"".join(frames))

    def output_bytes(self):
        """Bytes written to this socket that the client has not read yet (O(1))."""
        return self.batch_bytes + self.transport.get_write_buffer_size()

    def _open(self):
        # OPEN from the accept until a close frame goes either way (or the handshake
        # was refused); the transport closes when the client is gone.
        return self.conn.state is State.OPEN and not self.transport.is_closing()

    def keepalive_timeout(self):
        # While the app has not taken the client's earlier frames, reading is paused
        # and the pong waits behind them: the client is not silent, the server is
        # behind. Wait another timeout; one that never answers is closed with 1011.
        if self.read_paused and not self.close_sent:
            self.pong_timer = self.loop.call_later(
                self.ping_timeout, self.keepalive_timeout
            )
            return
        super().keepalive_timeout()

    async def send(self, message):
        # What was queued before this send goes out before it: one order per socket.
        self.broadcast_flush()
        kind = message["type"]
        if self.close_sent and self.handshake_complete and kind != "websocket.accept":
            # Closed by the server itself (a keepalive timeout, a protocol error) while
            # the app was sending: dropped, as after the client left (uvicorn raises).
            return
        if kind == "websocket.close":
            if self.handshake_complete and not self.writable.is_set():
                # A socket closed for not reading its output would never see room in
                # its buffer: the close frame goes after what is buffered, and the
                # sends waiting for room are released (and dropped, below).
                self.writable.set()
        elif not self.writable.is_set():
            await self.writable.wait()
            if self.close_sent:
                return  # closed while this frame waited for room: dropped
        await super().send(message)
        if kind == "websocket.accept":
            # uvicorn keeps the handshake's request and response, headers and all, as
            # long as the socket lives; nothing reads them after the accept.
            self.request = self.response = None
        elif (
            kind == "websocket.close"
            and self.close_timer is not None
            and self.transport.get_write_buffer_size()
        ):
            # uvicorn's close timer closes the transport, which first writes out its
            # buffer: never, for a client that does not read. Drop the buffer then.
            self.close_timer.cancel()
            self.close_timer = self.loop.call_later(
                self.close_timeout, self.transport.abort
            )

    def shutdown(self):
        self.broadcast_flush()
        super().shutdown()


class UpgradingHttpProtocol(HttpToolsProtocol):
    """uvicorn's httptools protocol, which lets go of its parser (a cycle: the parser
    calls back into the protocol) once a socket's protocol has taken the connection
    over, as it does when a connection is lost, so refcounting frees it at once."""

    def handle_websocket_upgrade(self):
        super().handle_websocket_upgrade()
        self.parser = None

"""The server's runtime: what serves the sockets fast, apart from the Django project.

`server` (the draining uvicorn launcher and its workers' supervisor), `websocket` (the
WebSocket protocol with batched writes), `frames` (the frames chat hands to it),
`pipelined_redis` (the event loop's auto-pipelined Redis client), `db` (the loop's
PostgreSQL connections, group commit, the database threads), `layers` (the pub/sub
channel layer) and `hub` (the process's one layer channel, routing events to its
sockets). Nothing here imports `chat` or `presence`, but the server's drain, which
has `chat.sockets` close the sockets.

A `Runtime` owns what belongs to the process's event loop: its Redis clients, its
PostgreSQL connections, its Hub, its channel layer's connections, its sockets' frames
waiting for the end of the loop turn, and the state apps keep per process
(`app_state`). The server makes it at startup and closes it at shutdown; `runtime()`
makes one on first use elsewhere (tests, whose every test runs a loop of its own, and
commands).
"""

import asyncio
import itertools
from collections.abc import Callable
from typing import TYPE_CHECKING, TypeVar, cast

from django.conf import settings

from voiceflow.redis import RedisAddress, redis_address

if TYPE_CHECKING:
    from .db import LoopConnection
    from .hub import Hub
    from .layers import _LoopLayer
    from .pipelined_redis import PipelinedRedis

State = TypeVar("State")


class Runtime:
    """What one event loop's sockets share: its Redis clients, its PostgreSQL
    connections, its Hub, the turn-end batch of their writes and the apps' state."""

    def __init__(self, loop: asyncio.AbstractEventLoop) -> None:
        self.loop = loop
        self.redis_clients: dict[RedisAddress, PipelinedRedis] = {}
        # DB_THREADS writers (a room always on the same one) and as many connections
        # for the sockets' reads and joins, opened on first use.
        self.db_writers: list[LoopConnection] | None = None
        self.db_readers: list[LoopConnection] | None = None
        self.db_tasks: set[asyncio.Task] = set()  # the connections' connect tasks
        self.reader_turn = itertools.count()
        # channel layer -> its Hub (tests make a layer per test), and the locks that
        # make one only
        self.hubs: dict[object, Hub] = {}
        self.hub_locks: dict[object, asyncio.Lock] = {}
        # channel layer -> its channels, groups and subscriber connections here
        # (voiceflow.runtime.layers)
        self.layers: dict[object, _LoopLayer] = {}
        # The sockets' protocols holding frames to write at the end of this loop turn
        # (voiceflow.runtime.websocket).
        self.batched: list = []
        self.app_states: dict[type, object] = {}  # a class -> its one instance here
        # The server's own: its loop outlives any request, so work may finish after
        # the call that started it (a publish's reply). Elsewhere (async_to_sync's
        # loop of one call, a command) the call waits for it.
        self.serving = False

    def redis(self, where: "RedisAddress | str | None" = None) -> "PipelinedRedis":
        """The PipelinedRedis for `where` (default: the store's Redis)."""
        address = redis_address(where)
        client = self.redis_clients.get(address)
        if client is None:
            from .pipelined_redis import PipelinedRedis

            client = self.redis_clients[address] = PipelinedRedis(address)
        return client

    def room_writer(self, room_id: int) -> "LoopConnection":
        """The writer connection for `room_id` (room id % DB_THREADS), so a room's
        messages are stored in order."""
        writers = self.db_writers
        if writers is None:
            writers = self._db_connections()[0]
        return writers[room_id % len(writers)]

    def socket_connection(self) -> "LoopConnection":
        """One of the socket connections (reads, joins), in turn."""
        readers = self.db_readers
        if readers is None:
            readers = self._db_connections()[1]
        return readers[next(self.reader_turn) % len(readers)]

    def _db_connections(self) -> "tuple[list[LoopConnection], list[LoopConnection]]":
        from .db import LoopConnection

        count = settings.DB_THREADS
        writers = [LoopConnection(self.db_tasks) for _ in range(count)]
        readers = [LoopConnection(self.db_tasks) for _ in range(count)]
        self.db_writers, self.db_readers = writers, readers
        return writers, readers

    def _db_opened(self) -> list["LoopConnection"]:
        """The loop's writer and reader connections, if made (`_db_connections`)."""
        return [*(self.db_writers or ()), *(self.db_readers or ())]

    async def hub(
        self,
        layer: object,
        *,
        room_group: Callable[[str], str],
        user_group: str,
        ephemeral: frozenset[str],
    ) -> "Hub":
        """The Hub on `layer`, started and subscribed to `user_group` on first use
        (the app names the groups and the ephemeral event types: `Hub`)."""
        current = self.hubs.get(layer)
        if current is not None:
            return current
        lock = self.hub_locks.setdefault(layer, asyncio.Lock())
        async with lock:
            current = self.hubs.get(layer)
            if current is None:
                from .hub import Hub

                current = await Hub.started(
                    layer,
                    room_group=room_group,
                    user_group=user_group,
                    ephemeral=ephemeral,
                )
                self.hubs[layer] = current
        return current

    def app_state(self, kind: type[State]) -> State:
        """This loop's one `kind()`, made on first use: what an app keeps per process
        (one per test in tests)."""
        found = self.app_states.get(kind)
        if found is None:
            found = self.app_states[kind] = kind()
        return cast(State, found)

    def abandon(self) -> None:
        """Drop what needs no awaiting to close (its loop is closed already)."""
        self.hubs.clear()
        self.hub_locks.clear()
        for layer in self.layers.values():
            layer.close()
        self.layers.clear()
        for client in self.redis_clients.values():
            client.close()
        self.redis_clients.clear()
        # Closed now, not when the collector finds them: a sync caller's async_to_sync
        # opens them on a loop of its own, one call long.
        for conn in self._db_opened():
            conn.abandon()
        self.db_writers = self.db_readers = None

    async def close(self) -> None:
        """Stop the Hubs and close the loop's connections, so none logs an EOF
        (before the loop ends)."""
        hubs = list(self.hubs.values())
        self.hubs.clear()
        self.hub_locks.clear()
        for hub in hubs:
            await hub.stop()
        for conn in self._db_opened():
            await conn.close()  # their waiting callers fail
        self.abandon()


_runtimes: dict[asyncio.AbstractEventLoop, Runtime] = {}  # one in a server process
_last: Runtime | None = None  # the one asked for last, found without a lookup


def runtime() -> Runtime:
    """The running event loop's Runtime, made on first use."""
    loop = asyncio.get_running_loop()
    last = _last
    if last is not None and last.loop is loop:
        return last
    return _runtime_of(loop)


def _runtime_of(loop):
    global _last
    current = _runtimes.get(loop)
    if current is None:
        runtimes_abandon_closed()
        current = _runtimes[loop] = Runtime(loop)
    _last = current
    return current


def runtimes_abandon_closed() -> None:
    """Drop the Runtimes of closed loops (async_to_sync's, tests'), closing their
    connections."""
    for closed in [loop for loop in _runtimes if loop.is_closed()]:
        _runtimes.pop(closed).abandon()


async def runtime_close() -> None:
    """Close the running loop's Runtime, if it has one (server shutdown, tests)."""
    global _last
    current = _runtimes.pop(asyncio.get_running_loop(), None)
    if _last is current:
        _last = None
    if current is not None:
        await current.close()

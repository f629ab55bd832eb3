"""Database access of the socket path: room writers on the loop, socket-read threads.

channels' database_sync_to_async runs close_old_connections() before and after every
call; with health checks on, the next query then pays a `SELECT 1` round trip first,
i.e. one extra round trip per stored message (and with the pool, a check-out, its
health check and a check-in per call). These threads keep their connections and do
that upkeep (health check, CONN_MAX_AGE) at most once per CHECK_INTERVAL per thread,
and at once after a call that hit a database error, so a broken connection is still
dropped before the next call.

On PostgreSQL the socket path's message inserts and simple reads (one autocommitted
statement each: chat.store.postgres) skip threads altogether: LoopConnection runs them
on async connections of the event loop, which its Runtime holds
(`runtime().room_writer(room_id)`, `runtime().socket_connection()`).
"""

import asyncio
import functools
import itertools
import threading
import time
from concurrent.futures import ThreadPoolExecutor

import psycopg
from asgiref.sync import SyncToAsync
from django.conf import settings
from django.db import DatabaseError, IntegrityError, close_old_connections, connections

from voiceflow import metrics

CHECK_INTERVAL = 1.0  # seconds

_checked = threading.local()


def _errors_occurred():
    return any(conn.errors_occurred for conn in connections.all(initialized_only=True))


class HotPathDatabaseSyncToAsync(SyncToAsync):
    def thread_handler(self, loop, *args, **kwargs):
        now = time.monotonic()
        if now - getattr(_checked, "at", float("-inf")) >= CHECK_INTERVAL:
            close_old_connections()
            _checked.at = now
        try:
            return super().thread_handler(loop, *args, **kwargs)
        finally:
            if _errors_occurred():
                close_old_connections()
                _checked.at = float("-inf")


# Django's one thread-sensitive worker would serialize every room's inserts and every
# socket's reads; these threads run them in parallel, each keeping its connection.
_room_executors: list[ThreadPoolExecutor] = []
_socket_executors: list[ThreadPoolExecutor] = []
_executors_lock = threading.Lock()
_socket_turn = itertools.count()


def _executors(pool, prefix):
    """`pool`, filled on first use with DB_THREADS single-thread executors."""
    if not pool:
        with _executors_lock:
            if not pool:  # another thread may have filled it meanwhile
                pool.extend(
                    ThreadPoolExecutor(1, thread_name_prefix=f"{prefix}-{n}")
                    for n in range(settings.DB_THREADS)
                )
    return pool


def _room_executor(room_id):
    executors = _executors(_room_executors, "db-room")
    return executors[room_id % len(executors)]


def room_database_sync_to_async(room_id):
    """HotPathDatabaseSyncToAsync on the room's own thread: FIFO per room."""
    return functools.partial(
        HotPathDatabaseSyncToAsync,
        thread_sensitive=False,
        executor=_room_executor(room_id),
    )


def socket_database_sync_to_async(func):
    """HotPathDatabaseSyncToAsync on the socket-read threads, in turn.

    On asgiref's one worker, 64 concurrent connects queued for up to a second each
    while the process was half idle. Each thread keeps its connection: returned to
    the pool after every call, the next call paid the pool's health check first.
    """

    @functools.wraps(func)
    async def call(*args, **kwargs):
        executors = _executors(_socket_executors, "db-socket")
        executor = executors[next(_socket_turn) % len(executors)]
        run = HotPathDatabaseSyncToAsync(
            func, thread_sensitive=False, executor=executor
        )
        return await run(*args, **kwargs)

    return call


def close_connections():
    """Close the DB threads' connections (tests drop their database afterwards)."""
    for executor in [*_room_executors, *_socket_executors]:
        executor.submit(connections.close_all).result()


# The socket path's statements on the event loop: message inserts (autocommitted, one
# statement each) on DB_THREADS writer connections per loop, a room always on the same
# one and in turn; the sockets' reads and joins on as many socket connections.


class LoopConnection:
    """An async PostgreSQL connection (autocommit) of the event loop, used in turn.

    `tasks` keeps its batch tasks alive (the loop keeps only a weak reference to a
    task): the Runtime's, shared by its connections.
    """

    def __init__(self, tasks: set[asyncio.Task]) -> None:
        self.lock = asyncio.Lock()  # FIFO: statements run in call order
        self.conn: psycopg.AsyncConnection | None = None
        self.batches: dict = {}  # statement builder -> [(item, future)] waiting to run
        self.tasks = tasks

    async def fetchone(self, sql, params):
        """Run one statement; its first row. psycopg errors come out as Django's."""
        async with self.lock:
            cursor = await self._execute(sql, params)
            return await cursor.fetchone()

    async def fetchall(self, sql, params):
        """Run one statement; all its rows. psycopg errors come out as Django's."""
        async with self.lock:
            cursor = await self._execute(sql, params)
            return await cursor.fetchall()

    async def batched(self, statement, item):
        """`item`'s row of `statement`, run for every item queued meanwhile at once.

        Group commit: while this connection is busy, items wait; then one statement
        (one round trip, one commit) runs for all of them, in submission order.
        `statement(items)` returns (sql, params) for rows whose first column is the
        item's index; an item with no row gets None. If the batch fails on a
        constraint, each item runs alone, so only the offending one sees the error.
        """
        future = asyncio.get_running_loop().create_future()
        queue = self.batches.get(statement)
        if queue is None:
            queue = self.batches[statement] = []
            task = asyncio.ensure_future(self._batches_run(statement, queue))
            self.tasks.add(task)
            task.add_done_callback(self.tasks.discard)
        queue.append((item, future))
        return await future

    async def _batches_run(self, statement, queue):
        """Run `statement`'s queued items, BATCH_MAX at a time, until none are left."""
        try:
            while queue:
                async with self.lock:
                    batch = queue[:BATCH_MAX]
                    del queue[:BATCH_MAX]
                    metrics.DB_BATCH_SIZE.observe(len(batch))
                    try:
                        await self._batch_run(statement, batch)
                    finally:
                        # Settled by now, unless this task was cancelled or hit a
                        # bug: its callers must not wait forever.
                        for _, future in batch:
                            future.cancel()
        finally:
            # No await since the last `while queue`: nothing was queued meanwhile.
            del self.batches[statement]
            for _, future in queue:  # only if cancelled (loop shutdown)
                future.cancel()

    async def _batch_run(self, statement, batch):
        try:
            rows = await self._fetchall(statement, [item for item, _ in batch])
        except IntegrityError as error:
            if len(batch) == 1:
                _settle(batch[0][1], error=error)
                return
            for one in batch:  # find the offending item(s); the rest still commit
                await self._batch_run(statement, [one])
            return
        except Exception as error:
            for _, future in batch:
                _settle(future, error=error)
            return
        found = {row[0]: row[1:] for row in rows}
        for index, (_, future) in enumerate(batch):
            _settle(future, result=found.get(index))

    async def _fetchall(self, statement, items):
        sql, params = statement(items)
        cursor = await self._execute(sql, params)
        return await cursor.fetchall()

    async def _execute(self, sql, params):
        """Execute on this connection (opened on first use); the lock is held."""
        try:
            if self.conn is None or self.conn.closed:
                self.conn = await psycopg.AsyncConnection.connect(
                    **_loop_connection_params(), autocommit=True
                )
            return await self.conn.execute(sql, params)
        except psycopg.IntegrityError as error:
            raise IntegrityError(*error.args) from error
        except psycopg.Error as error:
            if self.conn is not None and self.conn.broken:
                await self.close()  # the next statement reconnects
            raise DatabaseError(*error.args) from error

    async def close(self):
        conn, self.conn = self.conn, None
        if conn is not None:
            await conn.close()


# Items per group commit: a batch's statement and its reply stay a few hundred KB.
BATCH_MAX = 256


def _settle(future, *, result=None, error=None):
    if future.done():  # its caller was cancelled
        return
    if error is None:
        future.set_result(result)
    else:
        future.set_exception(error)


def _loop_connection_params():
    # Django's own connection parameters (host, credentials, OPTIONS, adapters); the
    # cursor class it names is a sync one.
    params = connections.create_connection("default").get_connection_params()
    params.pop("cursor_factory", None)
    params["prepare_threshold"] = 5 if settings.DB_PREPARED else None  # psycopg's 5
    # A database that does not answer must not hold a room's writer (and the rooms
    # sharing it) for the kernel's TCP timeout.
    params.setdefault("connect_timeout", 10)
    return params

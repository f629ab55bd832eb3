"""Database threads of the socket path: per-room writers and socket readers.

channels' database_sync_to_async runs close_old_connections() before and after every
call; with health checks on, the next query then pays a `SELECT 1` round trip first,
i.e. one extra round trip per stored message (and with the pool, a check-out, its
health check and a check-in per call). These threads keep their connections and do
that upkeep (health check, CONN_MAX_AGE) at most once per CHECK_INTERVAL per thread,
and at once after a call that hit a database error, so a broken connection is still
dropped before the next call.
"""

import functools
import itertools
import threading
import time
from concurrent.futures import ThreadPoolExecutor

from asgiref.sync import SyncToAsync
from django.conf import settings
from django.db import close_old_connections, connections

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


# One thread-sensitive worker used to serialize every room's inserts and every
# socket's reads; these threads run them in parallel, each keeping its connection.
_room_executors = []
_socket_executors = []
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

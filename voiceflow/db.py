"""database_sync_to_async for the per-message hot path: per-room threads, lazy upkeep.

channels' database_sync_to_async runs close_old_connections() before and after every
call; with health checks on, the next query then pays a `SELECT 1` round trip first,
i.e. one extra round trip per stored message. This variant does that upkeep (health check, CONN_MAX_AGE) at most once per
CHECK_INTERVAL per thread, and at once after a call that hit a database error, so a
broken connection is still dropped before the next message.
"""

import functools
import itertools
import threading
import time
from concurrent.futures import ThreadPoolExecutor

from asgiref.sync import SyncToAsync
from channels.db import DatabaseSyncToAsync
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


# Per-room writers: one thread-sensitive worker serialized every room's inserts. Each
# room's posts go to one of DB_THREADS single-thread executors (room_id % N), so rooms
# run in parallel while one room's posts stay FIFO; each thread keeps its connection.
_room_executors = []
_room_executors_lock = threading.Lock()


def _room_executor(room_id):
    if not _room_executors:
        with _room_executors_lock:
            if not _room_executors:  # another thread may have made them meanwhile
                count = settings.DB_THREADS
                _room_executors.extend(
                    ThreadPoolExecutor(1, thread_name_prefix=f"db-room-{n}")
                    for n in range(count)
                )
    return _room_executors[room_id % len(_room_executors)]


def room_database_sync_to_async(room_id):
    """hot_path_database_sync_to_async on the room's own thread: FIFO per room."""
    return functools.partial(
        HotPathDatabaseSyncToAsync,
        thread_sensitive=False,
        executor=_room_executor(room_id),
    )


# Socket reads (the connect and join path) get threads of their own too: on asgiref's
# one thread-sensitive worker they queued behind each other, so 64 concurrent connects
# took up to a second each while the process was half idle.
_socket_executors = []
_socket_turn = itertools.count()


def socket_database_sync_to_async(func):
    """channels' database_sync_to_async on one of DB_THREADS socket-read threads."""
    if not _socket_executors:
        with _room_executors_lock:
            if not _socket_executors:
                _socket_executors.extend(
                    ThreadPoolExecutor(1, thread_name_prefix=f"db-socket-{n}")
                    for n in range(settings.DB_THREADS)
                )

    @functools.wraps(func)
    async def call(*args, **kwargs):
        executor = _socket_executors[next(_socket_turn) % len(_socket_executors)]
        run = DatabaseSyncToAsync(func, thread_sensitive=False, executor=executor)
        return await run(*args, **kwargs)

    return call


def close_connections():
    """Close the DB threads' connections (tests drop their database afterwards)."""
    for executor in [*_room_executors, *_socket_executors]:
        executor.submit(connections.close_all).result()

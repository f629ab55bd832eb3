"""database_sync_to_async for the per-message hot path, with throttled connection upkeep.

channels' database_sync_to_async runs close_old_connections() before and after every
call; with health checks on, the next query then pays a `SELECT 1` round trip first,
i.e. one extra round trip per stored message on the single thread-sensitive worker.
This variant does that upkeep (health check, CONN_MAX_AGE) at most once per
CHECK_INTERVAL per thread, and at once after a call that hit a database error, so a
broken connection is still dropped before the next message.
"""

import threading
import time

from asgiref.sync import SyncToAsync
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


hot_path_database_sync_to_async = HotPathDatabaseSyncToAsync

"""GET /health's figures: are the database and Redis answering, and what is live.

Each check has its own short timeout, so a hung service makes the answer "degraded",
never slow. The database check runs on a thread of its own (one at a time: a hung
check is awaited again, not piled up) so it never waits behind socket work.
"""

import asyncio
import logging
import os
import weakref
from concurrent.futures import ThreadPoolExecutor

import redis.asyncio as aioredis
from django.conf import settings
from django.db import close_old_connections, connections

from chat import broadcast, ratelimit, selectors, sockets, tickets
from presence.selectors import presence_totals
from presence.services import SocketTyping, process_sizes

logger = logging.getLogger(__name__)

_db_executor = ThreadPoolExecutor(max_workers=1, thread_name_prefix="health-db")
_db_future = None  # the check in flight, shared by concurrent requests
_db_totals = {"totalUsers": 0, "totalRooms": 0}  # last figures read
_redis_clients = weakref.WeakKeyDictionary()  # event loop → client
_PAGE_SIZE = os.sysconf("SC_PAGE_SIZE")


def _database_totals():
    close_old_connections()  # drop a connection that died or outlived CONN_MAX_AGE
    try:
        return selectors.deployment_totals()
    except Exception:
        connections["default"].close()
        raise


def close_database_connection():
    """Close the health thread's database connection (tests drop their database)."""
    _db_executor.submit(connections.close_all).result()


async def database_check(timeout):
    """(answered, totals): totals are the last ones read when the database is down."""
    global _db_future, _db_totals
    if _db_future is None or _db_future.done():
        _db_future = _db_executor.submit(_database_totals)
    try:
        _db_totals = await asyncio.wait_for(asyncio.wrap_future(_db_future), timeout)
    except Exception as error:
        logger.warning(
            "health: database check failed: %r",
            error,
            extra={"event": "health_check_failed", "service": "database"},
        )
        return False, _db_totals
    return True, _db_totals


def _redis_client():
    # redis.asyncio connections belong to one event loop: one client per loop.
    loop = asyncio.get_running_loop()
    client = _redis_clients.get(loop)
    if client is None:
        timeout = settings.VOICEFLOW["HEALTH_TIMEOUT"]
        client = aioredis.Redis.from_url(
            settings.REDIS_URL, socket_connect_timeout=timeout, socket_timeout=timeout
        )
        _redis_clients[loop] = client
    return client


async def redis_check(timeout):
    """True if Redis answers PING in time; None when no Redis is configured."""
    if not settings.REDIS_URL:
        return None
    try:
        return bool(await asyncio.wait_for(_redis_client().ping(), timeout))
    except Exception as error:
        logger.warning(
            "health: redis check failed: %r",
            error,
            extra={"event": "health_check_failed", "service": "redis"},
        )
        return False


def structure_sizes():
    """Entries in each of this process's indexes by socket, user or room: each goes
    back to its idle size once the sockets, users and rooms it tracks are gone."""
    sizes = {**broadcast.hub_sizes(), **sockets.sizes(), **process_sizes()}
    if not settings.REDIS_URL:  # embedded: the in-memory twins of Redis' keys
        sizes["rateLimitKeys"] = ratelimit.memory_limiter.size()
        sizes["tickets"] = tickets.memory_tickets.size()
    return sizes


def memory_rss():
    """This process's resident set size in bytes."""
    try:
        with open("/proc/self/statm") as statm:
            return int(statm.read().split()[1]) * _PAGE_SIZE
    except OSError:
        import resource  # not Linux: the peak is the closest figure at hand

        return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024


async def presence_check(timeout):
    """The deployment's presence counts; zeros if the presence store does not answer."""
    try:
        return await asyncio.wait_for(presence_totals(), timeout)
    except Exception:
        logger.warning("presence counts unavailable", exc_info=True)
        return {"online": 0, "away": 0, "sockets": 0, "rooms": 0}


async def report():
    """(HTTP status, body) in the contract's shape."""
    timeout = settings.VOICEFLOW["HEALTH_TIMEOUT"]
    (database, totals), redis_ok, present = await asyncio.gather(
        database_check(timeout), redis_check(timeout), presence_check(timeout)
    )
    live = sockets.counts()
    healthy = database and redis_ok is not False
    body = {
        "status": "ok" if healthy else "degraded",
        "services": {"redis": redis_ok, "database": database},
        "metrics": {
            "presence": {
                "totalUsers": totals["totalUsers"],
                "onlineUsers": present["online"],
                "awayUsers": present["away"],
                "offlineUsers": max(
                    totals["totalUsers"] - present["online"] - present["away"], 0
                ),
                "totalRooms": totals["totalRooms"],
                "activeRooms": present["rooms"],
            },
            "sockets": {
                **live,
                "typingDebounces": SocketTyping.debounces(),
                "memoryUsage": {"rss": memory_rss()},
                "outputBytes": sockets.output_bytes(),
                "structures": structure_sizes(),
            },
        },
    }
    return (200 if healthy else 503), body

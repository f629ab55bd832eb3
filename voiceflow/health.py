"""GET /health's figures: are the database and Redis answering, and what is live;
GET /health/ready's answer: should a load balancer send this process new clients.

Each check has its own short timeout, so a hung service makes the answer "degraded",
never slow. The database checks run on threads of their own (one check at a time per
thread: a hung check is awaited again, not piled up) so they never wait behind socket
work.
"""

import asyncio
import logging
import os
from concurrent.futures import ThreadPoolExecutor

from django.conf import settings
from django.db import close_old_connections, connections

from chat import broadcast, ratelimit, selectors, sockets, tickets
from presence.selectors import presence_totals
from presence.services import SocketTyping, process_sizes

from .responses import json_send
from .runtime import runtime

logger = logging.getLogger(__name__)

_db_executor = ThreadPoolExecutor(max_workers=1, thread_name_prefix="health-db")
_db_future = None  # the check in flight, shared by concurrent requests
_db_totals = {"totalUsers": 0, "totalRooms": 0}  # last figures read
# Readiness pings on a thread of their own: a slow totals query must not make a load
# balancer take the process out.
_ping_executor = ThreadPoolExecutor(max_workers=1, thread_name_prefix="health-ping")
_ping_future = None
_draining = False
_PAGE_SIZE = os.sysconf("SC_PAGE_SIZE")


def _database_totals():
    close_old_connections()  # drop a connection that died or outlived CONN_MAX_AGE
    try:
        return selectors.deployment_totals()
    except Exception:
        connections["default"].close()
        raise


def close_database_connection():
    """Close the health threads' database connections (tests drop their database)."""
    _db_executor.submit(connections.close_all).result()
    _ping_executor.submit(connections.close_all).result()


def _database_ping():
    close_old_connections()
    try:
        with connections["default"].cursor() as cursor:
            cursor.execute("SELECT 1")
    except Exception:
        connections["default"].close()
        raise


def draining_start() -> None:
    """From now on this process is not ready: it is shutting down."""
    global _draining
    _draining = True


async def readiness() -> tuple[bool, str]:
    """(ready, why not): not while draining, nor while the database does not answer
    SELECT 1 within VOICEFLOW_HEALTH_TIMEOUT. Redis is not asked: without it sockets
    still connect, read history and recover, and every process shares one Redis, so
    taking them all out of the balancer would only turn an outage into a total one."""
    global _ping_future
    if _draining:
        return False, "draining"
    if _ping_future is None or _ping_future.done():
        _ping_future = _ping_executor.submit(_database_ping)
    timeout = settings.VOICEFLOW["HEALTH_TIMEOUT"]
    try:
        await asyncio.wait_for(asyncio.wrap_future(_ping_future), timeout)
    except Exception as error:
        logger.warning(
            "health: readiness database ping failed: %r",
            error,
            extra={"event": "health_check_failed", "service": "database"},
        )
        return False, "database"
    return (False, "draining") if _draining else (True, "")


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


async def redis_check(timeout):
    """True if Redis answers PING in time; None when no Redis is configured.

    Asked on the store modules' own connection (through Sentinel when configured):
    the Redis the hot path reaches is the one that counts.
    """
    if not settings.REDIS_URL:
        return None
    try:
        return await asyncio.wait_for(runtime().redis().ping(), timeout)
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


PROBE_PATHS = frozenset({"/health/live", "/health/ready"})


async def probe(scope, receive, send):
    """ASGI: GET /health/live and /health/ready, answered before Django.

    A load balancer checks every process every second or two, by address: any Host
    header (ALLOWED_HOSTS does not apply), no session, no middleware.
    """
    headers = {"Cache-Control": "no-store"}
    if scope["method"] not in ("GET", "HEAD"):  # HEAD: uvicorn leaves out the body
        status, body = 405, {"status": "method not allowed"}
        headers["Allow"] = "GET, HEAD"
    elif scope["path"] == "/health/live":
        status, body = 200, {"status": "live"}
    else:
        ready, reason = await readiness()
        status = 200 if ready else 503
        body = {"status": "ready"} if ready else {"status": "unready", "reason": reason}
    await json_send(send, body, status, headers)

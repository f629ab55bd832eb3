"""Redis clients for the store modules (the channel layer and cache have their own)."""

import asyncio

import redis
import redis.asyncio
from django.conf import settings

_async_clients = {}
_sync_clients = {}


def _options():
    # A blocking pool: with every connection busy (10,000 sockets pinging at once), a
    # command waits up to the store timeout for one instead of failing at once with
    # redis-py's MaxConnectionsError.
    return {
        "max_connections": settings.REDIS_MAX_CONNECTIONS,
        "timeout": settings.REDIS_STORE_TIMEOUT,
        "socket_timeout": settings.REDIS_STORE_TIMEOUT,
        "socket_connect_timeout": settings.REDIS_CONNECT_TIMEOUT,
        "decode_responses": True,
    }


def redis_client(url=None):
    """A redis.asyncio client for the running loop (connections never cross loops)."""
    loop = asyncio.get_running_loop()
    url = url or settings.REDIS_URL
    # Tests (and async_to_sync without a server loop) make many short-lived loops.
    for key in [key for key in _async_clients if key[0].is_closed()]:
        del _async_clients[key]
    client = _async_clients.get((loop, url))
    if client is None:
        pool = redis.asyncio.BlockingConnectionPool.from_url(url, **_options())
        client = redis.asyncio.Redis.from_pool(pool)
        _async_clients[(loop, url)] = client
    return client


async def redis_clients_close():
    """Close the running loop's clients (before the loop itself closes)."""
    loop = asyncio.get_running_loop()
    for key in [key for key in _async_clients if key[0] is loop]:
        await _async_clients.pop(key).aclose()


def redis_sync_client(url=None):
    """A blocking, thread-safe client for sync code (DRF throttles in sync views)."""
    url = url or settings.REDIS_URL
    client = _sync_clients.get(url)
    if client is None:
        pool = redis.BlockingConnectionPool.from_url(url, **_options())
        client = _sync_clients[url] = redis.Redis.from_pool(pool)
    return client


def redis_key(*parts):
    """A key under this deployment's REDIS_KEY_PREFIX."""
    return ":".join([settings.REDIS_KEY_PREFIX, *map(str, parts)])

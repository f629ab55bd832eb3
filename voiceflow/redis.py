"""The one async Redis client of a process (per event loop), for the store modules."""

import asyncio
import weakref

import redis.asyncio as aioredis
from django.conf import settings

# A redis.asyncio pool is bound to the loop it first ran on: one client per loop.
_clients = weakref.WeakKeyDictionary()


def redis_client():
    """The shared client for the running event loop (decoded str replies)."""
    loop = asyncio.get_running_loop()
    client = _clients.get(loop)
    if client is None:
        client = aioredis.Redis.from_url(
            settings.REDIS_URL,
            max_connections=settings.REDIS_MAX_CONNECTIONS,
            socket_timeout=settings.REDIS_SOCKET_TIMEOUT,
            socket_connect_timeout=settings.REDIS_CONNECT_TIMEOUT,
            decode_responses=True,
        )
        _clients[loop] = client
    return client


def redis_key(*parts):
    """A key under this deployment's prefix: `<REDIS_KEY_PREFIX>:<part>:<part>…`."""
    return ":".join((settings.REDIS_KEY_PREFIX, *map(str, parts)))

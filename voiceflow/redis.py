"""Where Redis is, and the clients that talk to it.

`redis_address` is the one place that turns the settings into "where is Redis":
REDIS_URL, or the primary that the REDIS_SENTINELS name for REDIS_SENTINEL_MASTER.
Every client stack starts from it: the runtime's `PipelinedRedis` (the event loop's
hot path: voiceflow.runtime.pipelined_redis), `redis_sync_client` (sync code), the
channel layer (voiceflow.runtime.layers, connecting as PipelinedRedis does) and
Django's cache (`cache_config`, django-redis).
"""

import functools
from dataclasses import dataclass
from urllib.parse import urlsplit, urlunsplit

import redis
import redis.sentinel
from django.conf import settings
from redis.connection import parse_url


@dataclass(frozen=True)
class RedisAddress:
    """Where one Redis is.

    `url` names the server, its database and credentials. With `sentinels` ((host,
    port) pairs) the server is whichever is the primary of `master` when a connection
    is made, as the Sentinels say; the URL then gives the scheme, credentials and
    database only.
    """

    url: str
    sentinels: tuple[tuple[str, int], ...] = ()
    master: str = ""

    def __post_init__(self) -> None:
        sentinels = tuple((str(host), int(port)) for host, port in self.sentinels)
        object.__setattr__(self, "sentinels", sentinels)
        if bool(sentinels) != bool(self.master):
            raise ValueError("Sentinels need the name of their master, and only they.")


@functools.lru_cache(maxsize=64)
def _store_address(url, sentinels, master):
    return RedisAddress(url, sentinels, master)


def redis_address(where: "RedisAddress | str | None" = None) -> RedisAddress:
    """Where `where` is: the store's Redis (settings) when None, a URL as it says."""
    if isinstance(where, RedisAddress):
        return where
    if where:
        return _store_address(where, (), "")
    # Asked for at every Redis call: kept while the settings object is the same one
    # (a test's override replaces it).
    wrapped = settings._wrapped
    if _default[0] is not wrapped:
        sentinels = tuple(map(tuple, settings.REDIS_SENTINELS))
        address = _store_address(
            settings.REDIS_URL, sentinels, settings.REDIS_SENTINEL_MASTER
        )
        _default[:] = [wrapped, address]
    return _default[1]


_default: list = [None, None]  # [the settings object, its store address]


def _credentials(url):
    """A URL's database, credentials and TLS flag as connection keywords (with
    Sentinel, its host and port are not where the primary is)."""
    options = parse_url(url)
    for name in ("host", "port", "path", "connection_class"):
        options.pop(name, None)
    if url.startswith("rediss:"):
        options["ssl"] = True
    return options


def sentinel_options(timeout: float) -> dict:
    """Connection keywords for the Sentinels themselves: short timeouts, no retries
    (a Sentinel that does not answer is skipped for the next one at once)."""
    return {"socket_connect_timeout": timeout, "socket_timeout": timeout, "retry": None}


def cache_config(
    address: RedisAddress, *, key_prefix: str, timeout: float, max_connections: int
) -> dict:
    """settings.CACHES["default"] for django-redis on `address`."""
    location = address.url
    options: dict = {
        "SOCKET_CONNECT_TIMEOUT": timeout,
        "SOCKET_TIMEOUT": timeout,
        "CONNECTION_POOL_KWARGS": {"max_connections": max_connections},
        # Redis down: a cache miss (sessions fall back to the database).
        "IGNORE_EXCEPTIONS": True,
    }
    if address.sentinels:
        # django-redis asks the Sentinels for the primary its URL's host names. Not
        # its SentinelClient: that reads from replicas, which may lag a write just made.
        parts = urlsplit(address.url)
        credentials = parts.netloc.rpartition("@")[0]
        netloc = f"{credentials}@{address.master}" if credentials else address.master
        location = urlunsplit(parts._replace(netloc=netloc))
        options["CONNECTION_FACTORY"] = "django_redis.pool.SentinelConnectionFactory"
        options["SENTINELS"] = [list(sentinel) for sentinel in address.sentinels]
        options["SENTINEL_KWARGS"] = sentinel_options(timeout)
    return {
        "BACKEND": "django_redis.cache.RedisCache",
        "LOCATION": location,
        "KEY_PREFIX": key_prefix,
        "OPTIONS": options,
    }


_sync_clients: dict = {}


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


class _BlockingSentinelPool(
    redis.sentinel.SentinelConnectionPool, redis.BlockingConnectionPool
):
    """Connections to the primary the Sentinels name, waited for as in _options."""


def redis_sync_client(where: "RedisAddress | str | None" = None) -> redis.Redis:
    """A blocking, thread-safe client for sync code (DRF throttles in sync views)."""
    address = redis_address(where)
    client = _sync_clients.get(address)
    if client is None:
        if address.sentinels:
            sentinels = redis.sentinel.Sentinel(
                list(address.sentinels),
                sentinel_kwargs=sentinel_options(settings.REDIS_CONNECT_TIMEOUT),
            )
            client = sentinels.master_for(
                address.master,
                connection_pool_class=_BlockingSentinelPool,
                **_credentials(address.url),
                **_options(),
            )
        else:
            pool = redis.BlockingConnectionPool.from_url(address.url, **_options())
            client = redis.Redis.from_pool(pool)
        _sync_clients[address] = client
    return client


def redis_key(*parts):
    """A key under this deployment's REDIS_KEY_PREFIX."""
    return ":".join([settings.REDIS_KEY_PREFIX, *map(str, parts)])

"""Redis clients for the store modules (the channel layer and cache have their own)."""

import asyncio
import functools
import hashlib
import ssl
from collections import deque

import hiredis
import redis
import redis.asyncio
from django.conf import settings
from redis.asyncio.connection import parse_url

_async_clients: dict = {}
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
    for key in [key for key in _pipelined_clients if key[0] is loop]:
        _pipelined_clients.pop(key).close()


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


class _Pipe(asyncio.Protocol):
    """One Redis connection: commands queued in a loop turn go out in one write."""

    def __init__(self, timeout):
        self.timeout = timeout
        self.reader = hiredis.Reader(
            encoding="utf-8",
            errors="surrogateescape",
            replyError=redis.exceptions.ResponseError,
        )
        self.waiters = deque()  # (future, deadline), in the order the replies come
        self.outgoing = []
        self.transport = None
        self.closed = False
        self.watchdog = None

    def connection_made(self, transport):
        self.transport = transport

    def connection_lost(self, exc):
        self._fail(redis.exceptions.ConnectionError("Connection to Redis lost."))

    def data_received(self, data):
        self.reader.feed(data)
        try:
            while (reply := self.reader.gets()) is not False:
                waiter = self.waiters.popleft()[0]
                if not waiter.done():  # a caller that gave up still had its reply
                    waiter.set_result(reply)
        except (hiredis.ProtocolError, IndexError):
            self._fail(redis.exceptions.ConnectionError("Redis protocol error."))

    def call(self, packed):
        """A future for the reply to one packed command."""
        loop = asyncio.get_running_loop()
        if not self.outgoing:
            loop.call_soon(self._flush)
        self.outgoing.append(packed)
        waiter = loop.create_future()
        self.waiters.append((waiter, loop.time() + self.timeout))
        if self.watchdog is None:
            self.watchdog = loop.call_later(self.timeout, self._watch)
        return waiter

    def _flush(self):
        if self.outgoing and not self.closed:
            self.transport.write(b"".join(self.outgoing))
        self.outgoing.clear()

    def _watch(self):
        # One timer per connection, not one per command: a reply overdue means the
        # connection (or Redis) is stuck, so everything waiting on it fails.
        self.watchdog = None
        if not self.waiters:
            return
        loop = asyncio.get_running_loop()
        deadline = self.waiters[0][1]
        if deadline <= loop.time():
            self._fail(redis.exceptions.TimeoutError("Timeout reading from Redis."))
        else:
            self.watchdog = loop.call_at(deadline, self._watch)

    def _fail(self, error):
        self.closed = True
        if self.transport is not None:
            try:
                self.transport.abort()
            except RuntimeError:
                pass  # its loop is closed already (a test's, or async_to_sync's)
        if self.watchdog is not None:
            self.watchdog.cancel()
            self.watchdog = None
        while self.waiters:
            waiter = self.waiters.popleft()[0]
            if not waiter.done():
                waiter.set_exception(error)


def _pack(args):
    out = [b"*%d\r\n" % len(args)]
    for arg in args:
        if isinstance(arg, str):
            arg = arg.encode("utf-8", "surrogateescape")
        elif isinstance(arg, float):
            arg = repr(arg).encode()
        elif not isinstance(arg, bytes):
            arg = str(arg).encode()
        out.append(b"$%d\r\n%s\r\n" % (len(arg), arg))
    return b"".join(out)


class PipelinedRedis:
    """A lean async Redis client for the hot path: one connection, auto-pipelined.

    Every command issued in one turn of the event loop leaves in one write and the
    replies come back in order. redis-py's async client checks a connection out of its
    pool, writes and reads once per command, several times the CPU of this. Errors are
    redis-py's, so callers handle both alike.
    """

    def __init__(self, url):
        options = parse_url(url)
        self.host = options.get("host", "localhost")
        self.port = options.get("port", 6379)
        self.path = options.get("path")
        self.ssl = ssl.create_default_context() if url.startswith("rediss:") else None
        self.db = int(options.get("db") or 0)
        self.username = options.get("username")
        self.password = options.get("password")
        self.timeout = settings.REDIS_STORE_TIMEOUT
        self.connect_timeout = settings.REDIS_CONNECT_TIMEOUT
        self.pipe = None
        self.connecting = asyncio.Lock()
        self.scripts = {}

    async def _pipe(self):
        async with self.connecting:
            if self.pipe is not None and not self.pipe.closed:
                return self.pipe
            loop = asyncio.get_running_loop()
            factory = functools.partial(_Pipe, self.timeout)
            try:
                async with asyncio.timeout(self.connect_timeout):
                    if self.path:
                        _, pipe = await loop.create_unix_connection(factory, self.path)
                    else:
                        _, pipe = await loop.create_connection(
                            factory, self.host, self.port, ssl=self.ssl
                        )
            except (OSError, TimeoutError) as error:
                raise redis.exceptions.ConnectionError(
                    f"Cannot connect to Redis: {error}"
                ) from error
            setup = []
            if self.password:
                auth = (
                    [self.username, self.password] if self.username else [self.password]
                )
                setup.append(pipe.call(_pack(["AUTH", *auth])))
            if self.db:
                setup.append(pipe.call(_pack(["SELECT", self.db])))
            for reply in await asyncio.gather(*setup):
                if isinstance(reply, redis.exceptions.ResponseError):
                    pipe._fail(redis.exceptions.ConnectionError(str(reply)))
                    raise redis.exceptions.AuthenticationError(str(reply))
            self.pipe = pipe
            return pipe

    async def execute_command(self, *args):
        pipe = self.pipe
        if pipe is None or pipe.closed:
            pipe = await self._pipe()
        reply = await pipe.call(_pack(args))
        if isinstance(reply, redis.exceptions.ResponseError):
            if str(reply).startswith("NOSCRIPT"):
                raise redis.exceptions.NoScriptError(str(reply))
            raise reply
        return reply

    def close(self):
        if self.pipe is not None:
            self.pipe._fail(redis.exceptions.ConnectionError("Client closed."))
            self.pipe = None

    # The subset of redis-py's API the store modules use.

    async def evalsha(self, sha, numkeys, *keys_and_args):
        return await self.execute_command("EVALSHA", sha, numkeys, *keys_and_args)

    async def eval(self, source, numkeys, *keys_and_args):
        return await self.execute_command("EVAL", source, numkeys, *keys_and_args)

    def register_script(self, source):
        """An awaitable `script(keys=..., args=...)`: EVALSHA, EVAL if not cached."""
        sha = hashlib.sha1(source.encode()).hexdigest()

        async def script(keys=(), args=()):
            try:
                return await self.evalsha(sha, len(keys), *keys, *args)
            except redis.exceptions.NoScriptError:
                return await self.eval(source, len(keys), *keys, *args)

        return script

    async def set(self, key, value, ex=None):
        args = ("SET", key, value) if ex is None else ("SET", key, value, "EX", ex)
        return await self.execute_command(*args) == "OK"

    async def getdel(self, key):
        return await self.execute_command("GETDEL", key)

    async def zrem(self, key, *members):
        return await self.execute_command("ZREM", key, *members)

    async def zrangebyscore(self, key, low, high, withscores=False):
        if not withscores:
            return await self.execute_command("ZRANGEBYSCORE", key, low, high)
        flat = await self.execute_command("ZRANGEBYSCORE", key, low, high, "WITHSCORES")
        return [(flat[i], float(flat[i + 1])) for i in range(0, len(flat), 2)]

    async def publish(self, channel, message):
        return await self.execute_command("PUBLISH", channel, message)

    async def ping(self):
        return await self.execute_command("PING") == "PONG"


_pipelined_clients: dict = {}


def redis_pipelined(url=None):
    """The running loop's PipelinedRedis for `url` (default REDIS_URL)."""
    loop = asyncio.get_running_loop()
    url = url or settings.REDIS_URL
    client = _pipelined_clients.get((loop, url))
    if client is None:
        for key in [key for key in _pipelined_clients if key[0].is_closed()]:
            _pipelined_clients.pop(key).close()
        client = _pipelined_clients[(loop, url)] = PipelinedRedis(url)
    return client

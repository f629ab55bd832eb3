"""The event loop's Redis client: one connection per server, auto-pipelined.

`PipelinedRedis` carries the hot path's commands (rate limits, tickets, presence,
publishes, the /health ping); where Redis is comes from `voiceflow.redis`, and the
loop's clients are its Runtime's (`runtime().redis(where)`).
"""

import asyncio
import functools
import hashlib
import ssl
from collections import deque
from collections.abc import Callable

import hiredis
import redis
from django.conf import settings
from redis.connection import parse_url

from voiceflow.redis import RedisAddress, redis_address


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
    """`args` (str, bytes, int or float) as one RESP command."""
    return hiredis.pack_command(tuple(args))


def _reply_error(pipe, reply):
    """The error to raise for an error reply (NOSCRIPT, not the primary, others)."""
    message = str(reply)
    if message.startswith("NOSCRIPT"):
        return redis.exceptions.NoScriptError(message)
    if message.startswith(_NOT_PRIMARY):
        pipe._fail(redis.exceptions.ConnectionError(message))
        return redis.exceptions.ConnectionError(message)
    return reply


def _replied(done, pipe, waiter):
    if waiter.cancelled():
        done(asyncio.CancelledError())
    elif (error := waiter.exception()) is not None:
        done(error)
    elif isinstance(reply := waiter.result(), redis.exceptions.ResponseError):
        done(_reply_error(pipe, reply))
    else:
        done(None)


def _executed(done, pending, task):
    pending.discard(task)
    done(asyncio.CancelledError() if task.cancelled() else task.exception())


# Replies from a server that is not (or not yet) a usable primary: a replica since a
# failover, or one still loading its data. The connection is dropped, so the next
# command connects again (through the Sentinels, to whichever is the primary then).
_NOT_PRIMARY = ("READONLY", "LOADING", "MASTERDOWN")


class PipelinedRedis:
    """A lean async Redis client for the hot path: one connection, auto-pipelined.

    Every command issued in one turn of the event loop leaves in one write and the
    replies come back in order. redis-py's async client checks a connection out of its
    pool, writes and reads once per command, several times the CPU of this. Errors are
    redis-py's, so callers handle both alike.

    With Sentinels, every new connection asks them for the primary (the one that
    answered last is asked first) and checks its ROLE; a lost connection or a
    READONLY / LOADING reply makes the next command connect again, so a failover is
    followed without a restart.
    """

    def __init__(self, where: "RedisAddress | str"):
        self.address = redis_address(where)
        options = parse_url(self.address.url)
        self.host = options.get("host", "localhost")
        self.port = options.get("port", 6379)
        self.path = options.get("path")
        self.ssl = (
            ssl.create_default_context()
            if self.address.url.startswith("rediss:")
            else None
        )
        self.db = int(options.get("db") or 0)
        self.username = options.get("username")
        self.password = options.get("password")
        self.sentinels = list(self.address.sentinels)
        self.timeout = settings.REDIS_STORE_TIMEOUT
        self.connect_timeout = settings.REDIS_CONNECT_TIMEOUT
        self.pipe = None
        self.scripts: dict = {}  # Lua source -> its script (register_script)
        self.connecting = asyncio.Lock()
        self.pending: set[asyncio.Task] = set()  # execute_nowait's, while connecting
        self.attempts = 0  # connection attempts made
        self.failure = None  # the last attempt's error, if it failed

    async def _connect(self, host, port, path=None, tls=None, factory=None):
        loop = asyncio.get_running_loop()
        if factory is None:
            factory = functools.partial(_Pipe, self.timeout)
        try:
            async with asyncio.timeout(self.connect_timeout):
                if path:
                    _, pipe = await loop.create_unix_connection(factory, path)
                else:
                    _, pipe = await loop.create_connection(factory, host, port, ssl=tls)
        except (OSError, TimeoutError) as error:
            raise redis.exceptions.ConnectionError(
                f"Cannot connect to Redis: {error}"
            ) from error
        return pipe

    async def _primary(self):
        """(host, port) of the primary, from the first Sentinel that names it."""
        master = self.address.master
        errors = []
        for sentinel in list(self.sentinels):
            try:
                pipe = await self._connect(*sentinel)
                try:
                    reply = await pipe.call(
                        _pack(["SENTINEL", "get-master-addr-by-name", master])
                    )
                finally:
                    pipe._fail(redis.exceptions.ConnectionError("Asked."))
            except redis.exceptions.RedisError as error:
                reply = error
            if isinstance(reply, list) and len(reply) == 2:
                self.sentinels.remove(sentinel)
                self.sentinels.insert(0, sentinel)
                return reply[0], int(reply[1])
            errors.append(f"{sentinel[0]}:{sentinel[1]} {reply!r}")
        raise redis.exceptions.ConnectionError(
            f"No Sentinel names the primary of {master!r}: {'; '.join(errors)}"
        )

    async def _pipe(self):
        attempt = self.attempts
        async with self.connecting:
            if self.pipe is not None and not self.pipe.closed:
                return self.pipe
            if self.attempts != attempt and self.failure is not None:
                # The attempt this command waited for failed: so does the command,
                # rather than every queued one connecting (and asking the
                # Sentinels) again in turn.
                raise type(self.failure)(*self.failure.args)
            self.attempts += 1
            try:
                self.pipe = await self.open_connection()
            except redis.exceptions.RedisError as error:
                self.failure = error
                raise
            self.failure = None
            return self.pipe

    async def open_connection(self, factory=None, *, select: bool = True):
        """A new connection to the primary: authenticated, on the URL's database if
        `select`, its role checked when the Sentinels named it. `factory` makes its
        protocol (default: this client's own), one with `call(packed)` returning a
        future of the reply and `_fail(error)`."""
        if self.sentinels:
            (host, port), path = await self._primary(), None
        else:
            host, port, path = self.host, self.port, self.path
        pipe = await self._connect(host, port, path, self.ssl, factory=factory)
        setup = []
        if self.password:
            auth = [self.username, self.password] if self.username else [self.password]
            setup.append(pipe.call(_pack(["AUTH", *auth])))
        if self.db and select:
            setup.append(pipe.call(_pack(["SELECT", self.db])))
        if self.sentinels:  # a Sentinel's answer may be stale by a failover
            setup.append(pipe.call(_pack(["ROLE"])))
        replies = await asyncio.gather(*setup)
        role = replies.pop() if self.sentinels else ["master"]
        for reply in replies:
            if isinstance(reply, redis.exceptions.ResponseError):
                pipe._fail(redis.exceptions.ConnectionError(str(reply)))
                raise redis.exceptions.AuthenticationError(str(reply))
        if not isinstance(role, list) or role[0] != "master":
            error = redis.exceptions.ConnectionError(f"Not the primary: {role!r}")
            pipe._fail(error)
            raise error
        return pipe

    async def execute_command(self, *args):
        pipe = self.pipe
        if pipe is None or pipe.closed:
            pipe = await self._pipe()
        reply = await pipe.call(_pack(args))
        if isinstance(reply, redis.exceptions.ResponseError):
            raise _reply_error(pipe, reply)
        return reply

    def execute_nowait(
        self, done: Callable[[BaseException | None], None], *args: object
    ) -> None:
        """Send a command without waiting for its reply: `done(error)` is called
        with None once it succeeded, or with the error execute_command would raise.

        On a connected client no task is made: the command joins this turn's write.
        """
        pipe = self.pipe
        if pipe is not None and not pipe.closed:
            waiter = pipe.call(_pack(args))
            waiter.add_done_callback(functools.partial(_replied, done, pipe))
            return
        task = asyncio.ensure_future(self.execute_command(*args))
        self.pending.add(task)  # the loop keeps only a weak reference to a task
        task.add_done_callback(functools.partial(_executed, done, self.pending))

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
        """An awaitable `script(keys=..., args=...)`: EVALSHA, EVAL if not cached.
        One per source and client: callers may ask for it at every call."""
        script = self.scripts.get(source)
        if script is not None:
            return script
        sha = hashlib.sha1(source.encode()).hexdigest()

        async def script(keys=(), args=()):
            try:
                return await self.execute_command(
                    "EVALSHA", sha, len(keys), *keys, *args
                )
            except redis.exceptions.NoScriptError:
                return await self.eval(source, len(keys), *keys, *args)

        self.scripts[source] = script
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

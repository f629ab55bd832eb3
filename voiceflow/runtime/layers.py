"""The Redis channel layer: pub/sub with one subscriber connection per shard.

channels-redis's pub/sub layer (whose names, hashing and message format this one
keeps) reads each published event through redis-py's pub/sub client, polls it with a
timeout ten times a second, queues the event, and wakes the receiving task to take
it. Here a shard's subscriber connection parses what Redis pushes with hiredis and
hands each event, as it arrives, to the callback its channel registered (the
process's Hub routes it to the sockets in the same call); a channel without one
queues its events for `receive`, as channels' layers do. Publishes go through the
loop's PipelinedRedis, so the PUBLISHes of one loop turn leave in one write.

A lost subscriber connection is opened again (and every subscription renewed) until
it succeeds: events published meanwhile are missed, and clients recover them by seq.
One that hears nothing for REDIS_SOCKET_TIMEOUT (it pings Redis every third of that
while quiet) counts as lost: a peer gone without a word closes nothing.

`shards`: the Redis servers (URLs, or RedisAddress keywords: the store's Redis
through Sentinel), each group and channel on one of them by channels-redis's
consistent hash of its name.
"""

import asyncio
import logging
import uuid
from collections.abc import Callable

import hiredis
import redis
from channels_redis.pubsub import RedisPubSubChannelLayer
from channels_redis.utils import _consistent_hash
from django.conf import settings

from voiceflow.redis import RedisAddress
from voiceflow.runtime import runtime

from .pipelined_redis import _pack

logger = logging.getLogger(__name__)

# Pushes that need no handling: unsubscribe confirmations, keepalive answers.
_QUIET = frozenset({b"unsubscribe", b"pong"})
# Waits between attempts to open a lost subscriber connection again.
RECONNECT_DELAYS = (0.05, 0.1, 0.25, 0.5, 1.0)


class PubSubChannelLayer(RedisPubSubChannelLayer):
    """A channel layer on Redis pub/sub (see the module's docstring).

    Beyond channels' layer API: `receive_with(channel, callback)` has `callback`
    called with each of the channel's events as it arrives, instead of queueing it.
    """

    def __init__(self, *args, shards, **kwargs):
        self.shards = [
            RedisAddress(**shard) if isinstance(shard, dict) else RedisAddress(shard)
            for shard in shards
        ]
        if not self.shards:
            raise ValueError("PubSubChannelLayer needs at least one Redis shard.")
        super().__init__(*args, **kwargs)
        self.prefix = kwargs.get("prefix", "asgi")

    def _get_layer(self) -> "_LoopLayer":
        """This layer's channels, groups and connections on the running loop: its
        Runtime's, closed with it."""
        states = runtime().layers
        layer = states.get(self)
        if layer is None:
            layer = states[self] = _LoopLayer(self)
        return layer

    def _shard(self, name: str) -> int:
        return _consistent_hash(name, len(self.shards))

    def _group_channel(self, group: str) -> str:
        return f"{self.prefix}__group__{group}"

    async def new_channel(self, prefix: str = "specific.") -> str:
        channel = f"{self.prefix}{prefix}{uuid.uuid4().hex}"
        await self._get_layer().channel_add(channel)
        return channel

    def receive_with(self, channel: str, callback: Callable[[dict], None]) -> None:
        """Have `callback(event)` called with each of `channel`'s events."""
        layer = self._get_layer()
        queued = layer.channels.get(channel)
        layer.channels[channel] = callback
        while isinstance(queued, asyncio.Queue) and not queued.empty():
            layer.deliver(callback, queued.get_nowait())

    async def receive(self, channel: str) -> dict:
        return await self._get_layer().receive(channel)

    async def send(self, channel: str, message: dict) -> None:
        await self._publish(channel, message)

    async def group_add(self, group: str, channel: str) -> None:
        await self._get_layer().group_add(self._group_channel(group), channel)

    async def group_discard(self, group: str, channel: str) -> None:
        await self._get_layer().group_discard(self._group_channel(group), channel)

    async def group_send(self, group: str, message: dict) -> None:
        """Publish `message` once to the group; every subscribed process gets it."""
        await self._publish(self._group_channel(group), message)

    def group_send_nowait(
        self, group: str, message: dict, done: Callable[[BaseException | None], None]
    ) -> None:
        """group_send without waiting for Redis: `done(error)` is called with None
        once Redis took the publish, or with the error group_send would raise."""
        name = self._group_channel(group)
        client = runtime().redis(self.shards[self._shard(name)])
        client.execute_nowait(done, "PUBLISH", name, self.serialize(message))

    async def _publish(self, name, message):
        shard = self.shards[self._shard(name)]
        await runtime().redis(shard).publish(name, self.serialize(message))

    async def flush(self) -> None:
        layer = runtime().layers.pop(self, None)
        if layer is not None:
            layer.close()


class _LoopLayer:
    """The layer's channels, groups and subscriber connections on one event loop."""

    def __init__(self, layer):
        self.layer = layer
        # channel name -> a callback (receive_with) or an asyncio.Queue (receive)
        self.channels: dict = {}
        self.groups: dict[str, set[str]] = {}  # group's channel name -> channels
        self.subscribers = [_Subscriber(self, shard) for shard in layer.shards]

    def _subscriber(self, name):
        return self.subscribers[self.layer._shard(name)]

    async def channel_add(self, channel):
        self.channels[channel] = asyncio.Queue()
        await self._subscriber(channel).subscribe(channel)

    async def receive(self, channel):
        queue = self.channels.get(channel)
        if queue is None:
            await self.channel_add(channel)
            queue = self.channels[channel]
        return self.layer.deserialize(await queue.get())

    async def group_add(self, name, channel):
        if channel not in self.channels:
            raise RuntimeError(f"Channel {channel!r} is not one of this process's.")
        self.groups.setdefault(name, set()).add(channel)
        await self._subscriber(name).subscribe(name)

    async def group_discard(self, name, channel):
        members = self.groups.get(name)
        if members is None or channel not in members:
            return
        members.discard(channel)
        if not members:
            del self.groups[name]
            self._subscriber(name).unsubscribe(name)

    def dispatch(self, name, data):
        """One event published on `name`: to its channel, or its group's."""
        target = self.channels.get(name)
        if target is not None:
            self.deliver(target, data)
            return
        for channel in self.groups.get(name, ()):
            target = self.channels.get(channel)
            if target is not None:
                self.deliver(target, data)

    def deliver(self, target, data):
        if isinstance(target, asyncio.Queue):
            target.put_nowait(data)
            return
        try:
            target(self.layer.deserialize(data))
        except Exception:
            logger.exception("handling a channel layer event failed")

    def close(self):
        for subscriber in self.subscribers:
            subscriber.close()
        self.channels.clear()
        self.groups.clear()


class _Subscriber:
    """One shard's subscriber connection: the names subscribed, kept across
    reconnects."""

    def __init__(self, owner, shard):
        self.owner = owner
        # The loop's client of the shard: where it is, and how a connection opens.
        self.client = runtime().redis(shard)
        self.names: set[str] = set()  # subscribed, or to be on the next connection
        self.protocol: _SubscriberProtocol | None = None
        self.connecting: asyncio.Future | None = None
        self.reconnecting: asyncio.Task | None = None
        self.closed = False

    async def subscribe(self, name):
        """Subscribe to `name`; returns once Redis confirmed it. Raises redis-py's
        ConnectionError (and TimeoutError) when the shard cannot be reached; the
        name stays wanted, and is subscribed once the connection is back."""
        self.names.add(name)
        protocol = await self._connected()
        await protocol.subscribe(name)

    def unsubscribe(self, name):
        self.names.discard(name)
        protocol = self.protocol
        if protocol is not None and not protocol.lost:
            protocol.send(_pack(["UNSUBSCRIBE", name]))

    async def _connected(self):
        protocol = self.protocol
        if protocol is not None and not protocol.lost:
            return protocol
        if self.connecting is None:
            self.connecting = asyncio.ensure_future(self._connect())
        connecting = self.connecting
        try:
            return await asyncio.shield(connecting)
        finally:
            if connecting.done() and self.connecting is connecting:
                self.connecting = None

    async def _connect(self):
        """A new connection, authenticated, on the primary, with every wanted name
        subscribed."""
        client = self.client
        async with asyncio.timeout(client.timeout):
            protocol = await client.open_connection(
                lambda: _SubscriberProtocol(self), select=False
            )
            try:
                protocol.pushes()
                names = list(self.names)
                if names:
                    await protocol.subscribe(*names)
            except BaseException:
                protocol.close()
                raise
        if self.closed:
            protocol.close()
            raise redis.exceptions.ConnectionError("Subscriber closed.")
        self.protocol = protocol
        return protocol

    def lost(self, protocol):
        """The connection is gone: open another while any name is wanted."""
        if protocol is not self.protocol or self.closed:
            return
        self.protocol = None
        if self.names and self.reconnecting is None:
            self.reconnecting = asyncio.ensure_future(self._reconnect())

    async def _reconnect(self):
        try:
            attempt = 0
            while self.names and not self.closed and self.protocol is None:
                await asyncio.sleep(RECONNECT_DELAYS[attempt])
                attempt = min(attempt + 1, len(RECONNECT_DELAYS) - 1)
                try:
                    await self._connected()
                except (redis.exceptions.RedisError, TimeoutError, OSError) as error:
                    logger.debug("channel layer reconnect failed: %s", error)
        finally:
            self.reconnecting = None

    def close(self):
        self.closed = True
        try:
            if self.reconnecting is not None:
                self.reconnecting.cancel()
            if self.protocol is not None:
                self.protocol.close()
        except RuntimeError:
            pass  # its loop is closed already (a test's, or async_to_sync's)
        self.protocol = None


class _SubscriberProtocol(asyncio.Protocol):
    """A subscriber connection: command replies in order, pushes to the layer."""

    def __init__(self, subscriber):
        self.subscriber = subscriber
        self.dispatch = subscriber.owner.dispatch
        # Text while the connection is set up (as PipelinedRedis reads it); bytes
        # once it takes pushes, whose payloads are serialized events.
        self.reader = hiredis.Reader(
            encoding="utf-8", replyError=redis.exceptions.ResponseError
        )
        self.replies: list[asyncio.Future] = []  # AUTH, ROLE: in order
        self.confirming: dict[bytes, list[_Confirmation]] = {}  # name -> waits
        self.transport = None
        self.lost = False
        self.silence = settings.REDIS_SOCKET_TIMEOUT
        self.heard_at = 0.0
        self.keepalive = None

    def connection_made(self, transport):
        self.transport = transport

    def _keepalive(self):
        loop = asyncio.get_running_loop()
        quiet = loop.time() - self.heard_at
        if quiet >= self.silence:
            logger.warning("channel layer connection silent; connecting again")
            self.close()
            return
        if quiet >= self.silence / 3:
            self.send(_pack(["PING"]))
        self.keepalive = loop.call_later(self.silence / 3, self._keepalive)

    def send(self, packed):
        if not self.lost:
            self.transport.write(packed)

    def call(self, packed):
        """A future for the reply to one packed command (while set up)."""
        future = asyncio.get_running_loop().create_future()
        self.replies.append(future)
        self.send(packed)
        return future

    def _fail(self, error):
        self.close()

    def pushes(self):
        """Set up: from here on, replies are read as bytes, and silence is watched."""
        self.reader.set_encoding(None)
        loop = asyncio.get_running_loop()
        self.heard_at = loop.time()
        self.keepalive = loop.call_later(self.silence / 3, self._keepalive)

    async def subscribe(self, *names):
        """Subscribe to `names`; returns once Redis confirmed each."""
        waiting = _Confirmation(asyncio.get_running_loop(), names)
        for name in waiting.pending:
            self.confirming.setdefault(name, []).append(waiting)
        self.send(_pack(["SUBSCRIBE", *names]))
        async with asyncio.timeout(self.subscriber.client.timeout):
            await waiting.future

    def data_received(self, data):
        self.heard_at = asyncio.get_running_loop().time()
        reader = self.reader
        reader.feed(data)
        try:
            while (reply := reader.gets()) is not False:
                if isinstance(reply, list) and reply and reply[0] == b"message":
                    self.dispatch(reply[1].decode(), reply[2])
                elif isinstance(reply, list) and reply and reply[0] == b"subscribe":
                    waiting = self.confirming.get(reply[1])
                    if waiting:
                        waiting.pop(0).confirmed(reply[1])
                        if not waiting:
                            del self.confirming[reply[1]]
                elif isinstance(reply, list) and reply and reply[0] in _QUIET:
                    pass
                elif reply == b"PONG":  # a keepalive answered outside subscribed mode
                    pass
                elif self.replies:
                    future = self.replies.pop(0)
                    if not future.done():
                        future.set_result(reply)
                else:
                    logger.warning("unexpected reply on a subscriber: %r", reply)
        except hiredis.ProtocolError:
            self.close()

    def connection_lost(self, exc):
        self.lost = True
        if self.keepalive is not None:
            self.keepalive.cancel()
        error = redis.exceptions.ConnectionError("Connection to Redis lost.")
        futures = {wait.future for waits in self.confirming.values() for wait in waits}
        for future in [*self.replies, *futures]:
            if not future.done():
                future.set_exception(error)
        self.replies.clear()
        self.confirming.clear()
        self.subscriber.lost(self)

    def close(self):
        if self.transport is not None and not self.lost:
            self.transport.abort()


class _Confirmation:
    """One SUBSCRIBE's wait for Redis to confirm each of its names."""

    def __init__(self, loop, names):
        self.future = loop.create_future()
        self.pending = {name.encode() for name in names}

    def confirmed(self, name):
        self.pending.discard(name)
        if not self.pending and not self.future.done():
            self.future.set_result(None)

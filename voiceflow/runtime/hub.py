"""The process's hub: its sockets by room and by user, fed by one layer channel.

Fan-out is per process, not per socket: the hub's one channel is in the group of each
room its sockets joined and in the user-events group, so an event arrives once per
process; it is routed to the local sockets by room or user, its WebSocket frame built
once for all of them. The app names the groups and says which events are ephemeral.

While the layer's Redis is unreachable (voiceflow.breaker) a room joined here is served
at once and its group joined when Redis answers again.
"""

import asyncio
import logging
from collections import deque
from collections.abc import Callable, Iterable

from django.conf import settings

from voiceflow import metrics
from voiceflow.breaker import UNREACHABLE, redis_breaker

from .frames import prebuilt_frame

logger = logging.getLogger(__name__)


class Hub:
    """This process's sockets by room and by user, fed by one layer channel.

    A socket is anything with `user_id`, `deliver(text, frame, ephemeral)` (a frame's
    text and its WebSocket frame, without waiting; `ephemeral` names the event type a
    socket behind on reading may drop, else None) and `user_event(event)`. The app
    names the groups (`room_group(slug)`, and `user_group` for user events) and the
    `ephemeral` event types.
    """

    def __init__(
        self,
        layer,
        channel: str | None,
        *,
        room_group: Callable[[str], str],
        user_group: str,
        ephemeral: frozenset[str],
    ) -> None:
        self.layer = layer
        self.channel = channel
        self.room_group = room_group
        self.user_group = user_group
        self.ephemeral = ephemeral
        self.sockets: set = set()
        self.users: dict = {}  # user id → its sockets here
        self.rooms: dict = {}  # room slug → the sockets here that joined it
        self.subscribed: set[str] = set()  # room slugs whose group our channel is in
        self.unsubscribed: set[str] = set()  # joined here, group not yet (Redis down)
        # the task joining those once Redis answers, and the one waiting for that
        self.resubscribing: asyncio.Future | None = None
        self.unsubscribed_watch: asyncio.Future | None = None
        # room slug → [lock around (un)subscribing its group, callers holding or
        # waiting for it]; dropped with its last caller, so rooms come and go
        self.room_locks: dict = {}
        # presence ids handled (one per room)
        self.presence_seen: deque = deque(maxlen=256)
        self.tasks: list[asyncio.Future] = []

    @classmethod
    async def started(
        cls,
        layer,
        *,
        room_group: Callable[[str], str],
        user_group: str,
        ephemeral: frozenset[str],
    ) -> "Hub":
        """A Hub on a new channel of `layer`, in `user_group`, started."""
        channel = await hub_channel(layer, user_group)
        hub = cls(
            layer,
            channel,
            room_group=room_group,
            user_group=user_group,
            ephemeral=ephemeral,
        )
        hub.start()
        return hub

    def start(self):
        self.tasks = [asyncio.ensure_future(self._receive_events())]

    async def stop(self):
        for task in (self.unsubscribed_watch, self.resubscribing):
            if task is not None:
                self.tasks.append(task)
        for task in self.tasks:
            task.cancel()
        await asyncio.gather(*self.tasks, return_exceptions=True)

    def socket_add(self, socket):
        self.sockets.add(socket)
        self.users.setdefault(socket.user_id, set()).add(socket)

    def socket_remove(self, socket):
        self.sockets.discard(socket)
        _discard(self.users, socket.user_id, socket)

    async def room_add(self, slug, socket):
        """Route `slug`'s events to `socket`; returns once the room's group is ours."""
        self.rooms.setdefault(slug, set()).add(socket)
        try:
            await self._subscription_sync(slug)
        except BaseException:
            _discard(self.rooms, slug, socket)
            raise

    async def room_remove(self, slug, socket):
        _discard(self.rooms, slug, socket)
        await self._subscription_sync(slug)

    async def _subscription_sync(self, slug):
        """Be in the room's group while (and only while) a local socket joined it."""
        entry = self.room_locks.get(slug)
        if entry is None:
            entry = self.room_locks[slug] = [asyncio.Lock(), 0]
        entry[1] += 1
        try:
            async with entry[0]:
                wanted = slug in self.rooms
                if not wanted:
                    self.unsubscribed.discard(slug)
                if wanted and slug not in self.subscribed:
                    await self._group_add(slug)
                elif not wanted and slug in self.subscribed:
                    self.subscribed.discard(slug)
                    await self.layer.group_discard(self.room_group(slug), self.channel)
        finally:
            entry[1] -= 1
            if not entry[1]:
                del self.room_locks[slug]

    async def _group_add(self, slug):
        """Join the room's group; with Redis down, leave that for `_resubscribe`."""
        breaker = layer_breaker()
        if self.channel is not None and breaker.allows():
            try:
                # The layer's own timeout is its long blocking read's.
                async with asyncio.timeout(settings.REDIS_STORE_TIMEOUT):
                    await self.layer.group_add(self.room_group(slug), self.channel)
            except (*UNREACHABLE, TimeoutError) as error:
                breaker.failed(error)
            else:
                self.subscribed.add(slug)
                self.unsubscribed.discard(slug)
                return
        self.unsubscribed.add(slug)
        if self.unsubscribed_watch is None or self.unsubscribed_watch.done():
            self.unsubscribed_watch = asyncio.ensure_future(self._watch_unsubscribed())

    async def _resubscribe(self):
        """Join the groups of the rooms joined here while Redis was down."""
        for slug in list(self.unsubscribed):
            if layer_breaker().down:
                return
            await self._subscription_sync(slug)

    def sizes(self):
        """How many entries each of its indexes holds (for /health)."""
        return {
            "hubSockets": len(self.sockets),
            "hubUsers": len(self.users),
            "hubRooms": len(self.rooms),
            "hubSubscribed": len(self.subscribed),
            "hubUnsubscribed": len(self.unsubscribed),
            "hubRoomLocks": len(self.room_locks),
        }

    async def _receive_events(self):
        while self.channel is None:  # started while Redis was unreachable
            await asyncio.sleep(settings.REDIS_RETRY_INTERVAL)
            self.channel = await hub_channel(self.layer, self.user_group)
        receive_with = getattr(self.layer, "receive_with", None)
        if receive_with is not None:
            # Routed as the layer reads it: no queue, no task woken per event.
            receive_with(self.channel, self._route)
            return
        while True:
            self._route(await self.layer.receive(self.channel))

    def _route(self, event):
        try:
            self.route(event)
        except Exception:
            logger.exception("routing a %s event failed", event.get("type"))

    def route(self, event):
        """Hand one layer event to the local sockets it is for."""
        kind = event["type"]
        if kind.startswith("user."):
            for socket in list(self.users.get(event["user_id"], ())):
                socket.user_event(event)
            return
        if kind == "presence":
            # Sent to each of the user's rooms; the first copy reaches all of them.
            if event["id"] in self.presence_seen:
                return
            self.presence_seen.append(event["id"])
            targets = set()
            for slug in event["rooms"]:
                targets |= self.rooms.get(slug, set())
        else:
            targets = self.rooms.get(event["room"], ())
        if kind == "typing":  # never echoed to the typist's own sockets
            targets = [s for s in targets if s.user_id != event["user_id"]]
        if not targets:
            return
        text = event["text"]
        frame = prebuilt_frame(text)  # once per process, not per socket
        ephemeral = kind if kind in self.ephemeral else None
        for socket in list(targets):
            socket.deliver(text, frame, ephemeral)
        frame_type = event.get("frame_type") or kind.replace(".", "_")
        metrics.frames_sent(frame_type, len(targets))

    async def _watch_unsubscribed(self):
        """While rooms joined here wait for their group, join them once Redis answers
        (checked every second; nothing runs while none waits)."""
        while self.unsubscribed:
            await asyncio.sleep(1.0)
            idle = self.resubscribing is None or self.resubscribing.done()
            ready = self.channel is not None and not layer_breaker().down
            if self.unsubscribed and ready and idle:
                self.resubscribing = asyncio.ensure_future(self._resubscribe())


class _ShardErrors:
    """A sharded layer's errors are its shard's own: they open no breaker (the other
    shards and the store's Redis may answer) and none gates them."""

    down = False

    def allows(self) -> bool:
        return True

    def failed(self, error: BaseException | None = None) -> None:
        pass


_SHARD_ERRORS = _ShardErrors()


def layer_breaker():
    """The breaker of the layer's operations: Redis's, unless the layer has servers
    of its own (REDIS_LAYER_URLS)."""
    return _SHARD_ERRORS if settings.REDIS_LAYER_URLS else redis_breaker


def hubs_sizes(hubs: Iterable[Hub]) -> dict[str, int]:
    """Hub.sizes() of `hubs`, added up (zeros for none)."""
    nothing = Hub(None, None, room_group=str, user_group="", ephemeral=frozenset())
    total = nothing.sizes()
    for hub in list(hubs):
        for name, size in hub.sizes().items():
            total[name] = total.get(name, 0) + size
    return total


def _discard(index, key, socket):
    members = index.get(key)
    if members is not None:
        members.discard(socket)
        if not members:
            del index[key]


async def hub_channel(layer, user_group: str) -> str | None:
    """A new layer channel, in the user-events group; None while Redis is unreachable
    (the Hub serves its sockets meanwhile and gets one once Redis answers)."""
    breaker = layer_breaker()
    if not breaker.allows():
        return None
    try:
        channel = await layer.new_channel()
        await layer.group_add(user_group, channel)
    except UNREACHABLE as error:
        breaker.failed(error)
        return None
    return channel

"""The only module that talks to the channel layer; group names are built here.

Fan-out is per process, not per socket: each process has one layer channel (its
`Hub`), subscribed to the groups of the rooms its sockets joined, plus one group for
user events (kicks, mutes). An event arrives once per process, is routed to the local
sockets by room or user, and its text, encoded once by the sender, is written to each.

While Redis is unreachable (voiceflow.breaker) an event that cannot be published is
routed to this process's own sockets alone; the other processes' sockets recover it by
seq once Redis is back. A room joined meanwhile is served here at once and its group
joined when Redis answers again.
"""

import asyncio
import logging
import time
from collections import deque

from channels.layers import get_channel_layer
from django.conf import settings

from voiceflow import metrics
from voiceflow.breaker import UNREACHABLE, redis_breaker
from voiceflow.frames_json import frame_encode

from .socket_writer import prebuilt_frame

logger = logging.getLogger(__name__)

USER_EVENTS_GROUP = "users"
# Events a socket that is behind on reading may miss: superseded by the next one.
EPHEMERAL = frozenset({"typing", "presence"})


def room_group(slug):
    return f"room.{slug}"


class Hub:
    """This process's sockets by room and by user, fed by one layer channel.

    A socket is anything with `user_id`, `deliver(text, frame, ephemeral)` (a frame's
    text and its WebSocket frame, without waiting; `ephemeral` names the event type a
    socket behind on reading may drop, else None), `user_event(event)` and
    `silence_check(now)`.
    """

    def __init__(self, layer, channel):
        self.layer = layer
        self.channel = channel
        self.sockets = set()
        self.users = {}  # user id → its sockets here
        self.rooms = {}  # room slug → the sockets here that joined it
        self.subscribed = set()  # room slugs whose group our channel is in
        self.unsubscribed = set()  # joined here, group not joined yet (Redis down)
        self.resubscribing = None  # the task joining those once Redis answers
        # room slug → [lock around (un)subscribing its group, callers holding or
        # waiting for it]; dropped with its last caller, so rooms come and go
        self.room_locks = {}
        self.presence_seen = deque(maxlen=256)  # presence ids handled (one per room)
        self.tasks = []
        self.loop = None

    def start(self):
        self.loop = asyncio.get_running_loop()
        self.tasks = [
            asyncio.ensure_future(self._receive_events()),
            asyncio.ensure_future(self._watch_silence()),
        ]

    async def stop(self):
        if self.resubscribing is not None:
            self.tasks.append(self.resubscribing)
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
                    await self.layer.group_discard(room_group(slug), self.channel)
        finally:
            entry[1] -= 1
            if not entry[1]:
                del self.room_locks[slug]

    async def _group_add(self, slug):
        """Join the room's group; with Redis down, leave that for `_resubscribe`."""
        breaker = _layer_breaker()
        if self.channel is not None and breaker.allows():
            try:
                # The layer's own timeout is its long blocking read's.
                async with asyncio.timeout(settings.REDIS_STORE_TIMEOUT):
                    await self.layer.group_add(room_group(slug), self.channel)
            except (*UNREACHABLE, TimeoutError) as error:
                breaker.failed(error)
            else:
                self.subscribed.add(slug)
                self.unsubscribed.discard(slug)
                return
        self.unsubscribed.add(slug)

    async def _resubscribe(self):
        """Join the groups of the rooms joined here while Redis was down."""
        for slug in list(self.unsubscribed):
            if _layer_breaker().down:
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
            self.channel = await _channel(self.layer)
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
        ephemeral = kind if kind in EPHEMERAL else None
        for socket in list(targets):
            socket.deliver(text, frame, ephemeral)
        frame_type = event.get("frame_type") or kind.replace(".", "_")
        metrics.frames_sent(frame_type, len(targets))

    async def _watch_silence(self):
        """One timer for all sockets: each closes itself once silent too long. It
        also joins, once Redis answers, the groups left unjoined while it did not."""
        loop = asyncio.get_running_loop()
        while True:
            dead_after = settings.VOICEFLOW["DEAD_AFTER"]
            await asyncio.sleep(min(1.0, dead_after / 10))
            now = loop.time()
            for socket in list(self.sockets):
                socket.silence_check(now)
            idle = self.resubscribing is None or self.resubscribing.done()
            ready = self.channel is not None and not _layer_breaker().down
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


def _layer_breaker():
    """The breaker of the layer's operations: Redis's, unless the layer has servers
    of its own (REDIS_LAYER_URLS)."""
    return _SHARD_ERRORS if settings.REDIS_LAYER_URLS else redis_breaker


def _discard(index, key, socket):
    members = index.get(key)
    if members is not None:
        members.discard(socket)
        if not members:
            del index[key]


_hubs: dict = {}  # channel layer → its Hub (tests make a layer per event loop)
_hub_locks: dict = {}


async def hub():
    """This process's Hub on the default layer, started and subscribed on first use."""
    layer = get_channel_layer()
    current = _hubs.get(layer)
    if current is not None:
        return current
    lock = _hub_locks.setdefault(layer, asyncio.Lock())
    async with lock:
        current = _hubs.get(layer)
        if current is None:
            current = Hub(layer, await _channel(layer))
            current.start()
            _hubs[layer] = current
    return current


async def _channel(layer):
    """A new layer channel, in the user-events group; None while Redis is unreachable
    (the Hub serves its sockets meanwhile and gets one once Redis answers)."""
    breaker = _layer_breaker()
    if not breaker.allows():
        return None
    try:
        channel = await layer.new_channel()
        await layer.group_add(USER_EVENTS_GROUP, channel)
    except UNREACHABLE as error:
        breaker.failed(error)
        return None
    return channel


def hub_sizes():
    """Hub.sizes() of this process's hubs, added up (one outside tests)."""
    total = Hub(None, None).sizes()  # zeros
    for current in list(_hubs.values()):
        for name, size in current.sizes().items():
            total[name] = total.get(name, 0) + size
    return total


async def hubs_stop():
    """Stop every Hub's tasks (tests: each test's loop closes with its layer)."""
    for current in list(_hubs.values()):
        await current.stop()
    _hubs.clear()
    _hub_locks.clear()


async def _publish(group, event):
    """Hand `event` to the layer for every process's sockets in `group`. One that
    cannot be published (Redis unreachable) goes to this process's sockets alone; a
    published one reaches them through the layer, like everyone's."""
    layer = get_channel_layer()
    started = time.perf_counter()
    breaker = _layer_breaker()
    if not breaker.down or breaker.allows():
        try:
            await layer.group_send(group, event)
        except UNREACHABLE as error:
            breaker.failed(error)
            _route_here(layer, event)
    else:
        _route_here(layer, event)
    if group != USER_EVENTS_GROUP:
        metrics.FANOUT_SECONDS.observe(time.perf_counter() - started)


def _route_here(layer, event):
    local = _hubs.get(layer)
    if local is not None and local.loop is asyncio.get_running_loop():
        local.route(event)


def _to_room(slug, frame):
    """(group, event) forwarding one frame, encoded once, to every socket that
    joined room `slug`."""
    event = {
        "type": "chat.message",
        "room": slug,
        "text": frame_encode(frame),
        "frame_type": frame["type"],
    }
    return room_group(slug), event


async def message_created(message):
    """Send a stored message to every socket that joined its room."""
    await _publish(*_to_room(message["room"], {"type": "message", **message}))


async def message_deleted(event):
    """Tell a room's sockets that a message is now a tombstone."""
    await _publish(*_to_room(event["room"], {"type": "message_deleted", **event}))


async def message_edited(event):
    """Tell a room's sockets a message's new body (the whole message object)."""
    await _publish(*_to_room(event["room"], {"type": "message_edited", **event}))


async def room_lock_changed(slug, locked):
    """Tell a room's sockets that posting there was switched off or on."""
    frame = {"type": "room_locked", "room": slug, "locked": locked}
    await _publish(*_to_room(slug, frame))


def _to_user(user_id, event):
    """(group, event) for every socket of a user."""
    # Rare, so one group every process is in; each Hub picks the user's sockets.
    return USER_EVENTS_GROUP, {**event, "user_id": user_id}


async def user_muted(user_id, until):
    """Tell every socket of a user until when they are muted (None: not muted)."""
    await _publish(*_to_user(user_id, {"type": "user.muted", "until": until}))


async def user_kicked(user_id):
    """Close every socket of a user (code 4403) in every process."""
    await _publish(*_to_user(user_id, {"type": "user.kicked"}))


async def user_room_removed(user_id, slug):
    """Every socket of a user leaves room `slug` (its group here and everywhere) and
    gets `room_removed`."""
    await _publish(*_to_user(user_id, {"type": "user.room_removed", "room": slug}))


def _to_user_frame(user_id, frame):
    """(group, event) forwarding one frame, encoded once, to every socket of a user."""
    event = {
        "type": "user.frame",
        "text": frame_encode(frame),
        "frame_type": frame["type"],
    }
    return _to_user(user_id, event)


async def user_room_added(user_id, slug):
    """Tell every socket of a user they are now a member of room `slug`."""
    await _publish(*_to_user_frame(user_id, {"type": "room_added", "room": slug}))


async def user_read(user_id, state):
    """Tell every socket of a user their read state in a room moved (`state` is
    {"room", "last_read_seq", "unread", "mentions"})."""
    await _publish(*_to_user_frame(user_id, {"type": "read", **state}))

"""The only module that talks to the channel layer; group names are built here.

Fan-out is per process, not per socket: each process has one layer channel (its
`Hub`, voiceflow.runtime.hub), subscribed to the groups of the rooms its sockets
joined, plus one group for user events (kicks, mutes). An event arrives once per
process, is routed to the local sockets by room or user, and its text, encoded once by
the sender, is written to each.

While Redis is unreachable (voiceflow.breaker) an event that cannot be published is
routed to this process's own sockets alone; the other processes' sockets recover it by
seq once Redis is back. A room joined meanwhile is served here at once and its group
joined when Redis answers again.
"""

import asyncio
import functools
import logging
import time

from channels.layers import get_channel_layer

from voiceflow import metrics
from voiceflow.breaker import UNREACHABLE
from voiceflow.frames_json import frame_encode
from voiceflow.runtime import runtime
from voiceflow.runtime.hub import Hub, hubs_sizes, layer_breaker

logger = logging.getLogger(__name__)

USER_EVENTS_GROUP = "users"
# Events a socket that is behind on reading may miss: superseded by the next one.
EPHEMERAL = frozenset({"typing", "presence"})


def room_group(slug):
    return f"room.{slug}"


async def hub() -> Hub:
    """This process's Hub on the default layer, started and subscribed on first use."""
    return await runtime().hub(
        get_channel_layer(),
        room_group=room_group,
        user_group=USER_EVENTS_GROUP,
        ephemeral=EPHEMERAL,
    )


def hub_sizes() -> dict[str, int]:
    """Hub.sizes() of this process's hubs, added up (one outside tests)."""
    return hubs_sizes(runtime().hubs.values())


async def _publish(group, event):
    """Hand `event` to the layer for every process's sockets in `group`. One that
    cannot be published (Redis unreachable) goes to this process's sockets alone; a
    published one reaches them through the layer, like everyone's.

    In the server, on Redis, the publish is not waited for: it leaves with this loop
    turn's other commands, and what its reply says is handled when it comes
    (`_published`). Elsewhere (a request's own loop, a command) it is waited for.
    """
    layer = get_channel_layer()
    breaker = layer_breaker()
    if breaker.down and not breaker.allows():
        _route_here(layer, event)
        return
    started = time.perf_counter()
    publish = getattr(layer, "group_send_nowait", None)
    if publish is not None and runtime().serving:
        publish(group, event, functools.partial(_published, group, event, started))
        return
    try:
        await layer.group_send(group, event)
    except UNREACHABLE as error:
        _published(group, event, started, error)
    else:
        _published(group, event, started, None)


def _published(group, event, started, error):
    """A publish's outcome: timed, or its event routed here if Redis is unreachable."""
    if error is None:
        if group != USER_EVENTS_GROUP:
            metrics.FANOUT_SECONDS.observe(time.perf_counter() - started)
    elif isinstance(error, UNREACHABLE):
        layer_breaker().failed(error)
        _route_here(get_channel_layer(), event)
    elif not isinstance(error, asyncio.CancelledError):  # cancelled: loop closing
        logger.error("publishing a %s event failed: %r", event.get("type"), error)


def _route_here(layer, event):
    local = runtime().hubs.get(layer)
    if local is not None:
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
    text = frame_encode(frame)
    event = {"type": "user.frame", "text": text, "frame_type": frame["type"]}
    return _to_user(user_id, event)


async def user_room_added(user_id, slug):
    """Tell every socket of a user they are now a member of room `slug`."""
    await _publish(*_to_user_frame(user_id, {"type": "room_added", "room": slug}))


async def user_read(user_id, state):
    """Tell every socket of a user their read state in a room moved (`state` is
    {"room", "last_read_seq", "unread", "mentions"})."""
    await _publish(*_to_user_frame(user_id, {"type": "read", **state}))

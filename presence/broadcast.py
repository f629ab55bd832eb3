"""The only presence module that talks to the channel layer; group names are built here.

Presence reaches sockets through the room groups chat subscribes them to; chat tells
presence how room groups are named (`use_room_groups`), so presence never imports chat.

While Redis is unreachable (voiceflow.breaker) these events are dropped: presence and
typing pause, and what they would have said is made right once it is back
(services.presence_restore).
"""

import uuid

from channels.layers import get_channel_layer

from voiceflow.breaker import UNREACHABLE, redis_breaker
from voiceflow.frames_json import frame_encode

_room_group = None


def use_room_groups(namer):
    """Name room groups with `namer(slug)` (chat's `room_group`, set in its ready())."""
    global _room_group
    _room_group = namer


def room_group(slug):
    if _room_group is None:
        raise RuntimeError("presence needs use_room_groups() before broadcasting")
    return _room_group(slug)


async def _send(group, event):
    """Publish `event`, or drop it while Redis is unreachable."""
    if not redis_breaker.allows():
        return
    try:
        await get_channel_layer().group_send(group, event)
    except UNREACHABLE as error:
        redis_breaker.failed(error)


async def presence_changed(username, status, rooms):
    """A `presence` event to every socket in `rooms`; sockets in several rooms get one.

    The same event (one id) goes to each room group; a process forwards an id once,
    to its sockets in any of `rooms`.
    """
    if not rooms:
        return
    text = frame_encode({"type": "presence", "user": username, "status": status})
    event = {
        "type": "presence",
        "id": uuid.uuid4().hex,
        "rooms": sorted(rooms),
        "text": text,
    }
    for slug in sorted(rooms):
        await _send(room_group(slug), event)


async def member_joined(slug, username):
    await _member_event("member_joined", slug, username)


async def member_left(slug, username):
    await _member_event("member_left", slug, username)


async def _member_event(kind, slug, username):
    text = frame_encode({"type": kind, "room": slug, "user": username})
    await _send(
        room_group(slug), {"type": kind.replace("_", "."), "room": slug, "text": text}
    )


async def typing_changed(slug, user_id, username, state):
    """A `typing` event to the room; the sender's own sockets drop it (by user id)."""
    frame = {"type": "typing", "room": slug, "user": username, "state": state}
    text = frame_encode(frame)
    await _send(
        room_group(slug),
        {"type": "typing", "room": slug, "user_id": user_id, "text": text},
    )

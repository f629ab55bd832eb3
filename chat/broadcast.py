"""The only module that talks to the channel layer; group names are built here."""

import time

import orjson
from channels.layers import get_channel_layer

from voiceflow import metrics


def room_group(slug):
    return f"room.{slug}"


def user_group(user_id):
    return f"user.{user_id}"


def encode(frame):
    """A frame as JSON text (encoded once, forwarded as is to every socket)."""
    return orjson.dumps(frame).decode()


async def socket_channel(alias):
    """A socket's own channel on layer `alias`: (the layer, the channel's name)."""
    layer = get_channel_layer(alias)
    if layer is None:
        return None, None
    return layer, await layer.new_channel()


async def room_subscribe(channel_name, slug):
    await get_channel_layer().group_add(room_group(slug), channel_name)


async def room_unsubscribe(channel_name, slug):
    await get_channel_layer().group_discard(room_group(slug), channel_name)


async def user_subscribe(channel_name, user_id):
    await get_channel_layer().group_add(user_group(user_id), channel_name)


async def user_unsubscribe(channel_name, user_id):
    await get_channel_layer().group_discard(user_group(user_id), channel_name)


async def _to_room(slug, frame):
    """Forward one frame, encoded once, to every socket that joined room `slug`."""
    event = {"type": "chat.message", "text": encode(frame), "frame_type": frame["type"]}
    started = time.perf_counter()
    await get_channel_layer().group_send(room_group(slug), event)
    metrics.FANOUT_SECONDS.observe(time.perf_counter() - started)


async def message_created(message):
    """Send a stored message to every socket that joined its room."""
    await _to_room(message["room"], {"type": "message", **message})


async def message_deleted(event):
    """Tell a room's sockets that a message is now a tombstone."""
    await _to_room(event["room"], {"type": "message_deleted", **event})


async def room_lock_changed(slug, locked):
    """Tell a room's sockets that posting there was switched off or on."""
    await _to_room(slug, {"type": "room_locked", "room": slug, "locked": locked})


async def user_muted(user_id, until):
    """Tell every socket of a user until when they are muted (None: not muted)."""
    await get_channel_layer().group_send(
        user_group(user_id), {"type": "user.muted", "until": until}
    )


async def user_kicked(user_id):
    """Close every socket of a user (code 4403) in every process."""
    await get_channel_layer().group_send(user_group(user_id), {"type": "user.kicked"})

"""The only module that talks to the channel layer; group names are built here."""

import orjson
from channels.layers import get_channel_layer


def room_group(slug):
    return f"room.{slug}"


def user_group(user_id):
    return f"user.{user_id}"


def encode(frame):
    """A frame as JSON text (encoded once, forwarded as is to every socket)."""
    return orjson.dumps(frame).decode()


async def room_subscribe(channel_name, slug):
    await get_channel_layer().group_add(room_group(slug), channel_name)


async def room_unsubscribe(channel_name, slug):
    await get_channel_layer().group_discard(room_group(slug), channel_name)


async def user_subscribe(channel_name, user_id):
    await get_channel_layer().group_add(user_group(user_id), channel_name)


async def user_unsubscribe(channel_name, user_id):
    await get_channel_layer().group_discard(user_group(user_id), channel_name)


async def message_created(message):
    """Send a stored message to every socket that joined its room."""
    text = encode({"type": "message", **message})
    await get_channel_layer().group_send(
        room_group(message["room"]), {"type": "chat.message", "text": text}
    )

"""The contract's message object, built once and used by every transport."""

from datetime import datetime


def timestamp(value):
    """ISO 8601 in UTC with a Z suffix, microseconds included."""
    # strftime("%Y-%m-%dT%H:%M:%S.%fZ"), several times faster (once per message).
    return value.replace(tzinfo=None).isoformat(timespec="microseconds") + "Z"


def message_data_posted(
    *,
    id: int,
    seq: int,
    room_slug: str,
    username: str,
    body: str,
    client_id: str | None,
    created_at: datetime,
) -> dict:
    """The wire form of a message just posted (not edited, deleted or mentioning
    anyone): `message_data` of it, without building the Message."""
    return {
        "id": id,
        "room": room_slug,
        "seq": seq,
        "user": username,
        "body": body,
        "created_at": timestamp(created_at),
        "client_id": client_id,
        "edited_at": None,
    }


def message_data(message, *, room_slug=None, username=None):
    """The wire form of a Message (a tombstone when deleted)."""
    data = {
        "id": message.id,
        "room": room_slug or message.room.slug,
        "seq": message.seq,
        "user": username or message.user.username,
        "body": "" if message.deleted_at else message.body,
        "created_at": timestamp(message.created_at),
        "client_id": message.client_id,
        "edited_at": message.edited_at and timestamp(message.edited_at),
    }
    if message.deleted_at:
        data["deleted"] = True
    elif message.mentions:  # absent when the message mentions no one
        data["mentions"] = message.mentions
    return data

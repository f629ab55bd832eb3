"""The contract's message object, built once and used by every transport."""


def timestamp(value):
    """ISO 8601 in UTC with a Z suffix, microseconds included."""
    return value.strftime("%Y-%m-%dT%H:%M:%S.%fZ")


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

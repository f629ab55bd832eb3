"""Reads: rooms, history, and who may post where."""

import re

from django.conf import settings
from django.db.models import Count

from .errors import Invalid, NotFound
from .models import SLUG_PATTERN, Membership, Message, Room

_slug_re = re.compile(SLUG_PATTERN)


def is_room_slug(value):
    """True if `value` has the form of a room slug."""
    return isinstance(value, str) and bool(_slug_re.match(value))


def room_get(slug):
    """The room with this slug, or NotFound."""
    if not is_room_slug(slug):
        raise NotFound(f"No room {slug!r}.", field="room")
    try:
        return Room.objects.get(slug=slug)
    except Room.DoesNotExist:
        raise NotFound(f"No room {slug!r}.", field="room") from None


def is_member(user, slug):
    """True if `user` has a stored membership of the room with this slug."""
    return Membership.objects.filter(user=user, room__slug=slug).exists()


def room_list():
    """All rooms with their member counts, by slug."""
    return Room.objects.annotate(member_count=Count("memberships")).order_by("slug")


def post_refusal(user, room):
    """Why `user` may not post in `room` right now, or None if they may."""
    if room.is_locked:
        return "This room is locked: reading still works, posting does not."
    return None


def history_limit(value):
    """A history page size from a query parameter (contract: default 50, max 200)."""
    conf = settings.VOICEFLOW
    if value in (None, ""):
        return conf["HISTORY_LIMIT_DEFAULT"]
    try:
        limit = int(value)
    except (TypeError, ValueError):
        raise Invalid("limit must be an integer.", field="limit") from None
    if limit < 1:
        raise Invalid("limit must be at least 1.", field="limit")
    return min(limit, conf["HISTORY_LIMIT_MAX"])


def _messages(room_id):
    return Message.objects.filter(room_id=room_id).select_related("user", "room")


def messages_after(room_id, seq, limit, *, before=None):
    """Up to `limit` messages from seq+1 on, oldest first, and whether more follow."""
    rows = _messages(room_id).filter(seq__gt=seq)
    if before is not None:
        rows = rows.filter(seq__lt=before)
    rows = list(rows.order_by("seq")[: limit + 1])
    return rows[:limit], len(rows) > limit


def messages_before(room_id, seq, limit):
    """The `limit` messages just before `seq`, oldest first, and whether older exist."""
    rows = list(_messages(room_id).filter(seq__lt=seq).order_by("-seq")[: limit + 1])
    return rows[:limit][::-1], len(rows) > limit


def messages_latest(room_id, limit):
    """The newest `limit` messages, oldest first, and whether older exist."""
    rows = list(_messages(room_id).order_by("-seq")[: limit + 1])
    return rows[:limit][::-1], len(rows) > limit

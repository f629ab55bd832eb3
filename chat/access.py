"""Who may see a room: the one rule every path applies (REST, socket, queue, pages).

A user may see a room if it is public, if they are a member, or if they are staff and
it is not a DM. Seeing is what joining, reading history and posting need (posting
has its own further rules: lock, mute). A room someone may not see does not exist for
them: they get the same `not_found` as for a slug that was never created.

The rule is written as a Q over rooms (querysets) and a Q over users (who may see
one room: mentions) here, and as an SQL condition in chat.store.sql's ROOM_JOIN (a
join on the event loop checks it in the same statement).

Who may delete others' messages (a moderator) is a permission, not staff status:
user_can_moderate.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from django.contrib.auth import get_user_model
from django.db.models import Q, QuerySet

from .errors import NotFound
from .models import Membership, Room

if TYPE_CHECKING:
    from django.contrib.auth.models import AnonymousUser, User

_PUBLIC = Room.Visibility.PUBLIC
_ROOM = Room.Kind.ROOM
# Django's "Can delete message" (superusers have every permission). Staff status
# alone is only access to the admin.
MODERATE_PERMISSION = "chat.delete_message"


def room_visible_q(*, user: User | AnonymousUser | None, prefix: str = "") -> Q:
    """Rooms `user` may see, as a Q over Room (or over `prefix`, e.g. "room__")."""
    q = Q(**{f"{prefix}visibility": _PUBLIC})
    if user is None or not user.is_authenticated:
        return q
    member_of = Membership.objects.filter(user_id=user.pk).values("room_id")
    q |= Q(**{f"{prefix}pk__in": member_of})
    if user.is_staff:
        q |= Q(**{f"{prefix}kind": _ROOM})
    return q


def room_queryset_visible(*, user: User | AnonymousUser | None) -> QuerySet:
    """The rooms `user` may see."""
    return Room.objects.filter(room_visible_q(user=user))


def room_can_see(*, user: User, room: Room) -> bool:
    """True if `user` may see `room` (a query only for a private room)."""
    if room.visibility == _PUBLIC or (user.is_staff and room.kind == _ROOM):
        return True
    return Membership.objects.filter(user_id=user.pk, room_id=room.pk).exists()


def room_get_visible(*, user: User | AnonymousUser | None, slug: str) -> Room:
    """The room with this slug if `user` may see it, else NotFound (as if unknown)."""
    room = None
    if isinstance(slug, str):
        room = room_queryset_visible(user=user).filter(slug=slug).first()
    if room is None:
        raise NotFound(f"No room {slug!r}.", field="room")
    return room


def room_audience_q(*, room: Room) -> Q:
    """Users who may see `room`, as a Q over the user model (active users only)."""
    q = Q(is_active=True)
    if room.visibility == _PUBLIC:
        return q
    member_ids = Membership.objects.filter(room_id=room.pk).values("user_id")
    if room.kind == _ROOM:
        return q & (Q(pk__in=member_ids) | Q(is_staff=True))
    return q & Q(pk__in=member_ids)


def room_audience(*, room: Room) -> QuerySet:
    """The users who may see `room`."""
    return get_user_model().objects.filter(room_audience_q(room=room))


def user_can_moderate(
    *, user: User | AnonymousUser | None, room: Room | None = None
) -> bool:
    """True if `user` may delete others' messages (in `room`, if given).

    A moderator holds MODERATE_PERMISSION, directly, through a group or as a
    superuser; in a room they may see (checked by the caller), not in a DM, where
    they are a participant like any other. Read fresh from the database (one query):
    a socket's user object lives as long as the socket, and a revoked permission
    must end at once.
    """
    if user is None or not user.is_authenticated:
        return False
    if room is not None and room.kind != _ROOM:
        return False
    moderators = get_user_model().objects.with_perm(
        MODERATE_PERMISSION, backend="django.contrib.auth.backends.ModelBackend"
    )
    return moderators.filter(pk=user.pk).exists()

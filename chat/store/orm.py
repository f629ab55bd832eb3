"""The ORM store: any database Django supports (SQLite in embedded mode).

The ORM twin of `sql`'s statements. It runs on voiceflow.runtime.db's threads, which
keep their connections: a room's inserts on its writer thread (one room's in call order,
each in a transaction of its own), the rest on the socket-read threads. The room
counters run on the caller's thread, in its transaction.
"""

from datetime import datetime
from typing import Any

from django.contrib.auth import get_user_model
from django.db import IntegrityError, transaction
from django.db.models import Exists, F, OuterRef, Subquery

from chat import access
from chat.models import Membership, Message, Mute, OfflineMark, Room
from voiceflow.runtime.db import (
    room_database_sync_to_async,
    socket_database_sync_to_async,
)

from . import Counter, Post, Taken


class OrmStore:
    async def message_insert(self, post: Post) -> tuple[int, int] | None:
        insert = room_database_sync_to_async(post.room_id)(_message_insert)
        return await insert(post)

    async def room_join(self, *, user: Any, slug: str) -> tuple[Room, bool]:
        return await _room_join(user, slug)

    async def user_active(self, user_id: int) -> Any:
        return await _user_active(user_id)

    async def token_user(self, key: str) -> Any:
        return await _token_user(key)

    async def offline_mark_exists(self, user_id: int) -> bool:
        return await _offline_mark_exists(user_id)

    async def room_last_seqs(self, slugs: list[str]) -> dict[str, int]:
        return await _room_last_seqs(list(slugs))

    def room_counter_take(
        self, *, room_id: int, counter: Counter, count: int, user_id: int, now: datetime
    ) -> Taken | None:
        rooms = Room.objects.filter(pk=room_id)
        # The update locks the row (SQLite: the database) to the caller's commit.
        if not rooms.update(**{counter: F(counter) + count}):
            return None
        mutes = _mutes(user_id, now).order_by("-until").values("pk")[:1]
        row = rooms.values_list(counter, "is_locked", Subquery(mutes)).get()
        return Taken(*row)


def _mutes(user_id, now):
    return Mute.objects.filter(user_id=user_id, until__gt=now)


def _message_insert(post):
    rooms = Room.objects.filter(pk=post.room_id, is_locked=False).exclude(
        Exists(_mutes(post.user_id, post.created_at))
    )
    if post.private:
        member = Membership.objects.filter(room_id=OuterRef("pk"), user_id=post.user_id)
        rooms = rooms.filter(Exists(member))
    try:
        with transaction.atomic():
            if not rooms.update(last_seq=F("last_seq") + 1):
                return None
            seq = Room.objects.values_list("last_seq", flat=True).get(pk=post.room_id)
            message = Message.objects.create(
                room_id=post.room_id,
                seq=seq,
                user_id=post.user_id,
                body=post.body,
                client_id=post.client_id,
                created_at=post.created_at,
            )
    except IntegrityError:
        return None  # a replay: the poster's client_id is taken
    return message.pk, seq


@socket_database_sync_to_async
def _room_join(user, slug):
    room = access.room_get_visible(user=user, slug=slug)
    return room, Membership.objects.get_or_create(user=user, room=room)[1]


@socket_database_sync_to_async
def _user_active(user_id):
    marks = OfflineMark.objects.filter(user_id=OuterRef("pk"))
    users = get_user_model().objects.filter(pk=user_id, is_active=True)
    return users.annotate(has_offline_mark=Exists(marks)).first()


@socket_database_sync_to_async
def _token_user(key):
    users = get_user_model().objects.filter(auth_token__key=key, is_active=True)
    return users.first()


@socket_database_sync_to_async
def _offline_mark_exists(user_id):
    return OfflineMark.objects.filter(user_id=user_id).exists()


@socket_database_sync_to_async
def _room_last_seqs(slugs):
    return dict(Room.objects.filter(slug__in=slugs).values_list("slug", "last_seq"))

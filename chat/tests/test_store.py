"""The message store: every implementation answers the same calls alike.

On PostgreSQL both run against the same database (the raw SQL on the event loop,
the ORM on threads), each on rooms and users of its own, and what they return and
store must be equal; on SQLite the ORM store runs alone. Either way the outcome is
the one expected.
"""

import asyncio
import functools
from datetime import timedelta

import pytest
from asgiref.sync import sync_to_async
from django.contrib.auth import get_user_model
from django.db import connection, transaction
from django.utils import timezone
from rest_framework.authtoken.models import Token

from chat import services, store
from chat.errors import Forbidden, NotFound
from chat.models import Membership, Message, Mute, OfflineMark, Room
from chat.store import Post, Taken
from chat.store.orm import OrmStore
from chat.store.postgres import PostgresStore

# The loop's connections and the threads' are their own: committed rows only.
pytestmark = pytest.mark.django_db(transaction=True)


def implementations():
    """{name: store} of every implementation that runs on this database."""
    found = {"orm": OrmStore()}
    if connection.vendor == "postgresql":
        found["postgresql"] = PostgresStore()
    return found


async def alike(scenario):
    """`scenario(store, tag)`'s outcome, the same for every implementation."""
    outcomes = {
        name: await scenario(implementation, name)
        for name, implementation in implementations().items()
    }
    first = outcomes["orm"]
    assert all(outcome == first for outcome in outcomes.values()), outcomes
    return first


def fields(instance):
    return {
        f.attname: getattr(instance, f.attname) for f in type(instance)._meta.fields
    }


@sync_to_async
def make_user(name, **extra):
    return get_user_model().objects.create_user(
        username=name, password="Store-Test-9", **extra
    )


@sync_to_async
def make_room(user, slug, visibility="public"):
    return services.room_create(user=user, name=slug, slug=slug, visibility=visibility)


def post(room, user, body, client_id=None, at=None):
    return Post(
        room.id, user.id, body, client_id, at or timezone.now(), not room.is_public
    )


@sync_to_async
def stored(room):
    """(seq, body) of the room's messages, and the room's last_seq."""
    rows = Message.objects.filter(room=room).order_by("seq")
    last_seq = Room.objects.values_list("last_seq", flat=True).get(pk=room.pk)
    return list(rows.values_list("seq", "body")), last_seq


async def test_the_process_uses_the_store_of_its_databases_vendor():
    wanted = PostgresStore if connection.vendor == "postgresql" else OrmStore
    assert type(store.message_store()) is wanted


async def test_posts_are_numbered_per_room_in_call_order_from_one():
    async def scenario(implementation, tag):
        user = await make_user(f"{tag}-poster")
        rooms = [await make_room(user, f"{tag}-{n}") for n in range(2)]
        calls = [post(rooms[n % 2], user, f"m{n}") for n in range(8)]
        rows = await asyncio.gather(*map(implementation.message_insert, calls))
        ids = await sync_to_async(list)(
            Message.objects.filter(room__in=rooms).values_list("id", "seq")
        )
        assert sorted(rows) == sorted(ids)  # (id, seq) as stored
        return [seq for _, seq in rows], [await stored(room) for room in rooms]

    seqs, rooms = await alike(scenario)
    assert seqs == [1, 1, 2, 2, 3, 3, 4, 4]
    assert rooms == [
        ([(1, "m0"), (2, "m2"), (3, "m4"), (4, "m6")], 4),
        ([(1, "m1"), (2, "m3"), (3, "m5"), (4, "m7")], 4),
    ]


async def test_a_refused_post_or_a_replay_stores_nothing_and_leaves_no_gap():
    async def scenario(implementation, tag):
        user, muted = await make_user(f"{tag}-u"), await make_user(f"{tag}-muted")
        outsider = await make_user(f"{tag}-outsider")
        room = await make_room(user, f"{tag}-room")
        locked = await make_room(user, f"{tag}-locked")
        private = await make_room(user, f"{tag}-private", visibility="private")
        await sync_to_async(Room.objects.filter(pk=locked.pk).update)(is_locked=True)
        await sync_to_async(Mute.objects.create)(
            user=muted, until=timezone.now() + timedelta(hours=1)
        )
        gone = Room(id=10**9)  # no such room
        insert = implementation.message_insert
        outcomes = [
            await insert(post(room, user, "first", "c-1")),
            await insert(post(room, user, "again", "c-1")),  # a replay
            await insert(post(room, muted, "muted")),
            await insert(post(locked, user, "locked")),
            await insert(post(gone, user, "gone")),
            await insert(post(private, outsider, "outsider")),
            await insert(post(private, user, "member")),
            await insert(post(room, user, "second", "c-2")),
        ]
        # The same at once (on PostgreSQL, statements shared by several posts).
        outcomes += await asyncio.gather(
            insert(post(room, user, "again", "c-2")),
            insert(post(room, muted, "muted")),
            insert(post(private, outsider, "outsider")),
            insert(post(private, user, "member")),
            insert(post(room, user, "third")),
        )
        seqs = [outcome and outcome[1] for outcome in outcomes]
        return seqs, await stored(room), await stored(locked), await stored(private)

    seqs, room, locked, private = await alike(scenario)
    assert seqs == [1, None, None, None, None, None, 1, 2, None, None, None, 2, 3]
    assert room == ([(1, "first"), (2, "second"), (3, "third")], 3)
    assert locked == ([], 0)
    assert private == ([(1, "member"), (2, "member")], 2)


async def test_a_socket_post_sent_twice_is_acked_twice_with_the_stored_message(
    monkeypatch, set_rate
):
    set_rate("message", 1000)

    async def scenario(implementation, tag):
        monkeypatch.setattr(store, "_store", implementation)
        user = await make_user(f"{tag}-u")
        room = await make_room(user, f"{tag}-room")
        # A socket's posts: the store's insert first.
        send = functools.partial(
            services.message_send, user=user, room=room, ensure_membership=False
        )
        first = await send(body="hi", client_id="c-1")
        again = await send(body="other", client_id="c-1")
        await Room.objects.filter(pk=room.pk).aupdate(is_locked=True)
        with pytest.raises(Forbidden) as refused:
            await send(body="no")
        assert again.message == first.message
        return first.created, again.created, again.message["seq"], refused.value.detail

    assert await alike(scenario) == (
        True,
        False,
        1,
        "This room is locked: reading still works, posting does not.",
    )


async def test_a_join_makes_a_member_of_a_room_the_user_may_see_and_reads_it_whole():
    async def scenario(implementation, tag):
        owner, user = await make_user(f"{tag}-owner"), await make_user(f"{tag}-u")
        staff = await make_user(f"{tag}-staff", is_staff=True)
        await make_room(owner, f"{tag}-public")
        await make_room(owner, f"{tag}-private", visibility="private")
        dm, _ = await sync_to_async(services.dm_open)(
            user=owner, usernames=[user.username]
        )

        async def join(who, slug):
            try:
                room, became_member = await implementation.room_join(
                    user=who, slug=slug
                )
            except NotFound:
                return "not found"
            assert fields(room) == fields(await Room.objects.aget(pk=room.pk))
            return became_member

        return [
            await join(user, f"{tag}-public"),
            await join(user, f"{tag}-public"),
            await join(user, f"{tag}-private"),  # not a member: unseen
            await join(owner, f"{tag}-private"),  # its creator, a member already
            await join(staff, f"{tag}-private"),  # staff see private rooms
            await join(staff, dm.slug),  # but not others' DMs
            await join(user, dm.slug),
            await join(user, f"{tag}-none"),
            await Membership.objects.filter(user=user).acount(),
            await Membership.objects.filter(user=staff).acount(),
        ]

    assert await alike(scenario) == [
        True,
        False,
        "not found",
        False,
        True,
        "not found",
        False,
        "not found",
        2,
        1,
    ]


async def test_a_connects_user_and_token_lookups_read_active_users_whole():
    async def scenario(implementation, tag):
        user, gone = await make_user(f"{tag}-u"), await make_user(f"{tag}-gone")
        token = await sync_to_async(Token.objects.create)(user=user)
        gone_token = await sync_to_async(Token.objects.create)(user=gone)
        gone.is_active = False
        await sync_to_async(gone.save)()

        def read(found):
            if found is None:
                return None
            assert fields(found) == fields(user) and not found._state.adding
            return found.is_authenticated, getattr(found, "has_offline_mark", None)

        before = [
            read(await implementation.user_active(user.pk)),
            await implementation.offline_mark_exists(user.pk),
        ]
        await sync_to_async(OfflineMark.objects.create)(user=user, since=timezone.now())
        return [
            *before,
            read(await implementation.user_active(user.pk)),
            await implementation.offline_mark_exists(user.pk),
            await implementation.offline_mark_exists(user.pk),  # not taken
            await implementation.user_active(gone.pk),
            await implementation.user_active(gone.pk + 1000),
            read(await implementation.token_user(token.key)),
            await implementation.token_user(gone_token.key),
            await implementation.token_user("not-a-key"),
        ]

    assert await alike(scenario) == [
        (True, False),
        False,
        (True, True),
        True,
        True,
        None,
        None,
        (True, None),
        None,
        None,
    ]


async def test_last_seqs_are_read_for_the_known_slugs():
    async def scenario(implementation, tag):
        user = await make_user(f"{tag}-u")
        for n, last_seq in enumerate((0, 7)):
            room = await make_room(user, f"{tag}-{n}")
            await Room.objects.filter(pk=room.pk).aupdate(last_seq=last_seq)
        seqs = await implementation.room_last_seqs([f"{tag}-0", f"{tag}-1", "none"])
        return {slug.replace(tag, ""): seq for slug, seq in seqs.items()}, (
            await implementation.room_last_seqs([])
        )

    assert await alike(scenario) == ({"-0": 0, "-1": 7}, {})


async def test_a_counter_take_adds_under_the_lock_and_reads_lock_and_mute():
    async def scenario(implementation, tag):
        user, other = await make_user(f"{tag}-u"), await make_user(f"{tag}-other")
        room = await make_room(user, f"{tag}-room")

        @sync_to_async
        def take(counter, count, room_id=room.pk):
            with transaction.atomic():
                return implementation.room_counter_take(
                    room_id=room_id,
                    counter=counter,
                    count=count,
                    user_id=user.pk,
                    now=timezone.now(),
                )

        first = [await take("last_seq", 1), await take("last_change", 3)]
        now = timezone.now()
        await Room.objects.filter(pk=room.pk).aupdate(is_locked=True)
        await Mute.objects.acreate(user=user, until=now + timedelta(hours=1))
        longest = await Mute.objects.acreate(user=user, until=now + timedelta(hours=2))
        await Mute.objects.acreate(user=other, until=now + timedelta(hours=3))
        await Mute.objects.acreate(user=user, until=now - timedelta(hours=1))
        locked = await take("last_seq", 2)
        gone = await take("last_seq", 1, room_id=10**9)
        after = await Room.objects.values_list("last_seq", "last_change").aget(
            pk=room.pk
        )
        return first, locked == Taken(3, True, longest.pk), gone, after

    assert await alike(scenario) == (
        [Taken(1, False, None), Taken(3, False, None)],
        True,
        None,
        (3, 3),
    )

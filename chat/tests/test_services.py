import asyncio
import functools
import threading
from datetime import UTC, datetime, timedelta

import pytest
from asgiref.sync import sync_to_async
from django.core.exceptions import ValidationError
from django.db import connection, connections

from chat import selectors, services
from chat.errors import Forbidden, Invalid, NotFound
from chat.models import Membership, Message, ModerationAction, Room
from chat.payloads import message_data, timestamp

pytestmark = pytest.mark.django_db


def post(user, room, body="hi", client_id=None):
    return services.message_post(user=user, room=room, body=body, client_id=client_id)


def test_each_room_numbers_its_messages_from_one(alice, lobby):
    other = services.room_create(user=alice, name="Other")
    seqs = [post(alice, lobby).message["seq"] for _ in range(3)]
    assert seqs == [1, 2, 3]
    assert post(alice, other).message["seq"] == 1
    lobby.refresh_from_db()
    assert lobby.last_seq == 3


def test_a_stored_message_has_the_contract_shape(alice, lobby):
    message = post(alice, lobby, "  hello  ", "c-1").message
    assert set(message) == {
        "id",
        "room",
        "seq",
        "user",
        "body",
        "created_at",
        "client_id",
        "edited_at",
    }
    assert message["room"] == "lobby"
    assert message["user"] == "alice"
    assert message["body"] == "hello"
    assert message["client_id"] == "c-1"
    assert message["created_at"].endswith("Z")


def test_a_repeated_client_id_returns_the_original_and_stores_nothing(alice, lobby):
    first = post(alice, lobby, "one", "c-1")
    again = post(alice, lobby, "two", "c-1")
    assert first.created and not again.created
    assert again.message == first.message
    assert Message.objects.count() == 1
    lobby.refresh_from_db()
    assert lobby.last_seq == 1  # the replay's seq bump was rolled back


def test_client_ids_are_per_user(alice, bob, lobby):
    assert post(alice, lobby, client_id="same").created
    assert post(bob, lobby, client_id="same").created


@pytest.mark.parametrize(
    "body",
    [
        "",
        "   \n\t ",
        "x" * 4001,
        "nul\x00byte",
        "bell\x07",
        "esc\x1b[31m",
        "c1\x85c1",
        None,
        5,
    ],
)
def test_bad_bodies_are_invalid_and_nothing_is_stored(alice, lobby, body):
    with pytest.raises(Invalid) as refused:
        post(alice, lobby, body)
    assert refused.value.field == "body"
    assert not Message.objects.exists()


def test_a_body_of_4000_code_points_newlines_and_tabs_is_accepted(alice, lobby):
    assert post(alice, lobby, "é" * 4000).created
    assert (
        post(alice, lobby, "line one\n\tline two").message["body"]
        == "line one\n\tline two"
    )


@pytest.mark.parametrize("client_id", ["", "x" * 65, 7, ["a"]])
def test_bad_client_ids_are_invalid(alice, lobby, client_id):
    with pytest.raises(Invalid):
        post(alice, lobby, client_id=client_id)


def test_posting_in_a_locked_room_is_forbidden_and_leaves_no_gap(alice, lobby):
    post(alice, lobby)
    Room.objects.filter(pk=lobby.pk).update(is_locked=True)
    with pytest.raises(Forbidden):
        post(alice, lobby)  # the socket's cached room still says unlocked
    Room.objects.filter(pk=lobby.pk).update(is_locked=False)
    assert post(alice, lobby).message["seq"] == 2


def test_posting_makes_the_poster_a_member(alice, lobby):
    post(alice, lobby)
    assert Membership.objects.filter(user=alice, room=lobby).exists()


def test_room_create_makes_a_slug_from_the_name_and_refuses_a_taken_one(alice):
    room = services.room_create(user=alice, name="Tea & Biscuits!")
    assert room.slug == "tea-biscuits"
    with pytest.raises(ValidationError) as refused:
        services.room_create(user=alice, name="Again", slug="tea-biscuits")
    assert "slug" in refused.value.message_dict


@pytest.mark.parametrize("slug", ["-lead", "UPPER", "sp ace", "x" * 51])
def test_room_create_refuses_malformed_slugs(alice, slug):
    with pytest.raises(ValidationError):
        services.room_create(user=alice, name="Room", slug=slug)


def run_concurrently(workers):
    """Start every worker at once; return what each returned or raised."""
    barrier = threading.Barrier(len(workers))
    results = [None] * len(workers)

    def run(i, work):
        try:
            barrier.wait()
            results[i] = work()
        except Exception as error:  # reported to the test, not swallowed
            results[i] = error
        finally:
            connections.close_all()

    threads = [threading.Thread(target=run, args=(i, w)) for i, w in enumerate(workers)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(60)
    return results


@pytest.mark.django_db(transaction=True)
def test_concurrent_writers_get_gap_free_unique_seqs(make_user):
    users = [make_user(f"writer{i}") for i in range(6)]
    lobby = Room.objects.get_or_create(slug="lobby", defaults={"name": "Lobby"})[0]
    per_writer = 15

    def writer(user):
        return lambda: [post(user, lobby).message["seq"] for _ in range(per_writer)]

    results = run_concurrently([writer(u) for u in users])
    seqs = [seq for result in results for seq in result]
    assert sorted(seqs) == list(range(1, per_writer * len(users) + 1))
    stored = list(Message.objects.filter(room=lobby).values_list("seq", flat=True))
    assert sorted(stored) == sorted(seqs)
    # Within each writer, its own messages are numbered in the order it sent them.
    assert all(result == sorted(result) for result in results)


@pytest.mark.django_db(transaction=True)
def test_racing_copies_of_one_client_id_store_one_message(alice):
    lobby = Room.objects.get_or_create(slug="lobby", defaults={"name": "Lobby"})[0]
    results = run_concurrently([lambda: post(alice, lobby, "once", "race")] * 4)
    assert not [r for r in results if isinstance(r, Exception)]
    assert sum(r.created for r in results) == 1
    assert len({r.message["id"] for r in results}) == 1
    assert Message.objects.count() == 1
    lobby.refresh_from_db()
    assert lobby.last_seq == 1


def test_the_test_database_is_the_configured_engine():
    # Guards the two CI passes: the Redis/PostgreSQL pass must really use PostgreSQL.
    import os

    expected = (
        "postgresql"
        if os.environ.get("DATABASE_URL", "").startswith("postgres")
        else "sqlite"
    )
    assert connection.vendor == expected


def test_the_mute_check_rides_on_the_seq_bump_without_a_query_of_its_own(alice, lobby):
    from django.test.utils import CaptureQueriesContext

    with CaptureQueriesContext(connection) as queries:
        post(alice, lobby)
    touching_mutes = [q["sql"] for q in queries if "chat_mute" in q["sql"]]
    # PostgreSQL: the seq bump's statement reads it; the ORM store: the read of the
    # bumped seq that follows the bump.
    room_statement = (
        "UPDATE chat_room" if connection.vendor == "postgresql" else 'FROM "chat_room"'
    )
    assert len(touching_mutes) == 1 and room_statement in touching_mutes[0]


def test_a_muted_poster_is_refused_with_the_time_left_and_leaves_no_gap(
    alice, bob, lobby
):
    post(alice, lobby)
    services.user_mute(actor=bob, user=alice, duration=timedelta(minutes=90))
    with pytest.raises(Forbidden) as refused:
        post(alice, lobby)
    assert "muted for another 1 h 30 min" in refused.value.detail
    assert post(bob, lobby).message["seq"] == 2
    services.user_unmute(actor=bob, user=alice)
    assert post(alice, lobby).message["seq"] == 3


def test_mute_refusal_says_the_time_left_rounded_up():
    now = datetime(2026, 1, 1, 12, 0, tzinfo=UTC)
    left = {
        timedelta(seconds=0.2): "1 s",
        timedelta(seconds=59): "59 s",
        timedelta(minutes=5): "5 min",
        timedelta(hours=2, seconds=3): "2 h 3 s",
        timedelta(days=1, minutes=1): "24 h 1 min",
    }
    for delta, words in left.items():
        detail = selectors.mute_refusal(now + delta, now=now)
        assert detail.startswith(f"You are muted for another {words} (until 2026-")
    assert selectors.mute_refusal(now, now=now) is None
    assert selectors.mute_refusal(None, now=now) is None


def test_an_author_deletes_their_message_but_not_others(alice, bob, lobby):
    mine, theirs = post(alice, lobby).message, post(bob, lobby).message
    result = services.message_delete(user=alice, room=lobby, message_id=mine["id"])
    assert result.deleted and result.event == {
        "room": "lobby",
        "id": mine["id"],
        "seq": 1,
        "change": 1,
    }
    again = services.message_delete(user=alice, room=lobby, message_id=mine["id"])
    assert not again.deleted and again.event == result.event
    with pytest.raises(Forbidden):
        services.message_delete(user=alice, room=lobby, message_id=theirs["id"])
    with pytest.raises(NotFound):
        services.message_delete(user=alice, room=lobby, message_id=10**9)
    assert list(
        Message.objects.filter(deleted_at__isnull=False).values_list("id", flat=True)
    ) == [mine["id"]]
    assert ModerationAction.objects.get().actor == alice


def test_deployment_totals_count_users_and_rooms(alice, bob, lobby):
    services.room_create(user=alice, name="Second")
    assert selectors.deployment_totals() == {"totalUsers": 2, "totalRooms": 2}


@pytest.mark.django_db(transaction=True)
async def test_concurrent_sends_to_two_rooms_number_each_room_gap_free(
    alice, bob, set_rate
):
    set_rate("message", 1000)
    rooms = [
        await sync_to_async(services.room_create)(user=alice, name=name)
        for name in ("One", "Two")
    ]
    sends = [
        services.message_send(user=user, room=room, body=f"{user} {n}")
        for n in range(15)
        for room in rooms
        for user in (alice, bob)
    ]
    results = await asyncio.gather(*sends)  # on two writer threads unless ids collide
    for room in rooms:
        mine = [r.message for r in results if r.message["room"] == room.slug]
        assert sorted(m["seq"] for m in mine) == list(range(1, 31))


@pytest.mark.django_db(transaction=True)
async def test_a_join_by_slug_makes_a_member_once_and_returns_the_room(alice, lobby):
    room, became_member = await services.room_join_visible(user=alice, slug="lobby")
    assert (room.pk, room.slug, room.last_seq, became_member) == (
        lobby.pk,
        "lobby",
        0,
        True,
    )
    again = await services.room_join_visible(user=alice, slug="lobby")
    assert again[1] is False
    assert await Membership.objects.filter(user=alice).acount() == 1
    with pytest.raises(NotFound):
        await services.room_join_visible(user=alice, slug="no-such-room")


@pytest.fixture
def batches(monkeypatch):
    """The group-commit statements the test's posts ran in, in order: the bodies
    each one stored."""
    statements = []
    from chat.store import postgres

    insert_statement = postgres.insert_statement

    def counted(posts):
        statements.append([post.body for post in posts])
        return insert_statement(posts)

    monkeypatch.setattr(postgres, "insert_statement", counted)
    return statements


@pytest.mark.django_db(transaction=True)
@pytest.mark.skipif(
    connection.vendor != "postgresql", reason="loop connections: PostgreSQL"
)
async def test_one_batch_stores_allowed_posts_gap_free_and_sorts_out_the_rest(
    alice, bob, lobby, set_rate, batches
):
    set_rate("message", 1000)
    send = functools.partial(services.message_send, room=lobby, ensure_membership=False)
    first = await send(user=bob, body="first", client_id="b-1")
    await sync_to_async(services.user_mute)(
        actor=bob, user=alice, duration=timedelta(minutes=5)
    )
    outcomes = await asyncio.gather(
        send(user=bob, body="one"),
        send(user=alice, body="muted"),
        send(user=bob, body="replayed", client_id="b-1"),
        send(user=bob, body="two", client_id="b-2"),
        return_exceptions=True,
    )
    # Together first (but a post that found the writer idle, gone at once); the
    # replay's constraint hit splits them.
    assert any({"muted", "replayed", "two"} <= set(batch) for batch in batches)
    one, muted, replayed, two = outcomes
    assert isinstance(muted, Forbidden) and "muted" in muted.detail
    assert replayed.created is False and replayed.message == first.message
    assert [one.message["seq"], two.message["seq"]] == [2, 3]
    stored = await sync_to_async(list)(
        Message.objects.filter(room=lobby).values_list("seq", "body")
    )
    assert stored == [(1, "first"), (2, "one"), (3, "two")]


@pytest.mark.django_db(transaction=True)
@pytest.mark.skipif(
    connection.vendor != "postgresql", reason="loop connections: PostgreSQL"
)
async def test_a_batch_stores_each_body_and_time_exactly_as_acked(
    alice, lobby, set_rate, batches
):
    set_rate("message", 1000)
    send = functools.partial(
        services.message_send, user=alice, room=lobby, ensure_membership=False
    )
    await send(body="first")
    bodies = ['a "quote", a \\ and \\u0041', "🎉 ünï 中文", "tab\tand\nnewline", "{}"]
    acked = await asyncio.gather(
        *(send(body=body, client_id=f"c-{i}") for i, body in enumerate(bodies))
    )
    assert max(map(len, batches)) >= 2  # they shared a statement
    stored = await sync_to_async(list)(
        Message.objects.filter(room=lobby, seq__gt=1)
        .order_by("seq")
        .values_list("body", "client_id", "created_at")
    )
    assert [(body, cid, timestamp(at)) for body, cid, at in stored] == [
        (r.message["body"], r.message["client_id"], r.message["created_at"])
        for r in sorted(acked, key=lambda r: r.message["seq"])
    ]
    assert sorted(body for body, _, _ in stored) == sorted(bodies)


@pytest.mark.django_db(transaction=True)
async def test_a_socket_post_broadcasts_the_message_as_it_reads_back(alice, lobby):
    """The socket path builds the wire form without a Message: it must be the one
    every other path (history, recovery by seq) reads from the database."""
    result = await services.message_send(
        user=alice, room=lobby, body="plain", client_id="q-1", ensure_membership=False
    )
    stored = await sync_to_async(Message.objects.select_related("room", "user").get)(
        pk=result.message["id"]
    )
    assert result.message == message_data(stored)


def test_timestamps_are_utc_iso_with_microseconds_and_z():
    at = datetime(2026, 1, 2, 3, 4, 5, 60, tzinfo=UTC)
    assert timestamp(at) == "2026-01-02T03:04:05.000060Z"
    assert timestamp(at.replace(microsecond=0)) == "2026-01-02T03:04:05.000000Z"

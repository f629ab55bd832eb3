"""Pongs carry each joined room's stored last_seq: a lost tail shows within a beat."""

import asyncio

import pytest
from asgiref.sync import sync_to_async
from django.db import DatabaseError

from chat import selectors, services
from chat.models import Room
from chat.tests.test_consumers import joined, send_message, signed_in

pytestmark = pytest.mark.django_db(transaction=True)


@pytest.fixture
def max_age(settings):
    """Set how old (seconds) a pong's last_seq values may be."""

    def set_max_age(seconds):
        settings.VOICEFLOW = {**settings.VOICEFLOW, "LAST_SEQ_MAX_AGE": seconds}

    return set_max_age


@pytest.fixture
def reads(monkeypatch):
    """The rooms asked for by each last_seq read (the real read still runs)."""
    calls = []
    real = selectors.room_last_seqs_aget

    async def counted(slugs):
        calls.append(sorted(slugs))
        return await real(slugs)

    monkeypatch.setattr(selectors, "room_last_seqs_aget", counted)
    return calls


def store_unbroadcast(user, slug, body):
    """Store a message the way a lost broadcast leaves it: in the database only."""
    room = Room.objects.get(slug=slug)
    return services.message_post(user=user, room=room, body=body)


async def ping(socket, ts=1):
    await socket.send_json_to({"type": "ping", "ts": ts})
    while (frame := await socket.receive_json_from())["type"] != "pong":
        pass
    return frame


async def test_a_pong_reports_the_stored_last_seq_of_a_room_whose_tail_was_lost(
    alice, bob, lobby, max_age
):
    max_age(0)  # every pong reads afresh: this test is about the value
    await sync_to_async(Room.objects.create)(slug="quiet", name="Quiet")
    socket = await joined(alice)
    await socket.send_json_to({"type": "join", "room": "quiet"})
    assert (await socket.receive_json_from())["type"] == "joined"
    await send_message(socket, "seen live", client_id="c1")
    assert {(await socket.receive_json_from())["type"] for _ in range(2)} == {
        "ack",
        "message",
    }
    # Bob's last three messages are stored but never reach alice's socket; then the
    # room goes quiet.
    for n in range(3):
        await sync_to_async(store_unbroadcast)(bob, "lobby", f"lost {n}")
    assert await socket.receive_nothing(0.3)

    pong = await ping(socket, ts=42)
    assert pong["ts"] == 42 and isinstance(pong["server_ts"], int)
    assert pong["last_seq"] == {"lobby": 4, "quiet": 0}
    await socket.disconnect()


async def test_a_pong_of_a_socket_in_no_room_has_no_last_seq(alice, lobby, reads):
    socket = await signed_in(alice)
    pong = await ping(socket)
    assert "last_seq" not in pong
    assert reads == []  # and costs no read
    await socket.disconnect()


async def test_one_read_serves_every_socket_until_the_values_are_too_old(
    alice, bob, lobby, max_age, reads
):
    max_age(3600)
    sockets = [await joined(alice), await joined(bob), await joined(alice)]
    pongs = await asyncio.gather(*(ping(s) for s in sockets))  # at the same moment
    assert [p["last_seq"] for p in pongs] == [{"lobby": 0}] * 3
    assert len(reads) == 1 and "lobby" in reads[0]  # one statement for all three

    await sync_to_async(store_unbroadcast)(bob, "lobby", "lost")
    assert (await ping(sockets[0]))["last_seq"] == {"lobby": 0}  # still young enough
    assert len(reads) == 1
    max_age(0)  # the values are now too old: the next pong reads again
    assert (await ping(sockets[1]))["last_seq"] == {"lobby": 1}
    assert len(reads) == 2
    for socket in sockets:
        await socket.disconnect()


async def test_a_room_joined_after_the_last_read_is_read_at_once(
    alice, lobby, max_age, reads
):
    max_age(3600)
    await sync_to_async(Room.objects.create)(slug="later", name="Later")
    socket = await joined(alice)
    assert (await ping(socket))["last_seq"] == {"lobby": 0}
    await socket.send_json_to({"type": "join", "room": "later"})
    assert (await socket.receive_json_from())["type"] == "joined"
    assert (await ping(socket))["last_seq"] == {"lobby": 0, "later": 0}
    assert len(reads) == 2 and {"later", "lobby"} <= set(reads[1])
    await socket.disconnect()


async def test_with_the_database_down_pongs_go_on_without_last_seq(
    alice, lobby, max_age, monkeypatch
):
    max_age(3600)
    socket = await joined(alice)
    calls = []

    async def failing(slugs):
        calls.append(slugs)
        raise DatabaseError("connection refused")

    monkeypatch.setattr(selectors, "room_last_seqs_aget", failing)
    for _ in range(3):
        pong = await ping(socket)
        assert pong["type"] == "pong" and "last_seq" not in pong
    assert len(calls) == 1  # not a query per ping while it is down
    monkeypatch.undo()
    max_age(0)
    assert (await ping(socket))["last_seq"] == {"lobby": 0}
    await socket.disconnect()

"""The offline queue: what others posted while a user was offline, once, on connect."""

import asyncio
from datetime import timedelta

import pytest
from asgiref.sync import sync_to_async
from django.utils import timezone

from chat import services
from chat.models import Message, OfflineMark, Room
from chat.tests.sockets import QuietCommunicator
from chat.tickets import ticket_issue
from voiceflow.asgi import application

pytestmark = pytest.mark.django_db(transaction=True)

GRACE = 0.2


@pytest.fixture(autouse=True)
def fast_grace(presence_conf, lobby):
    Room.objects.get_or_create(slug="design", defaults={"name": "Design"})
    presence_conf(OFFLINE_GRACE=GRACE, PRESENCE_TOUCH_INTERVAL=0)


async def connect(user):
    """A socket past its hello; the frames after it are left to the test."""
    ticket = await sync_to_async(ticket_issue)(user.pk)
    socket = QuietCommunicator(application, f"/ws/chat/?ticket={ticket}")
    assert (await socket.connect())[0]
    assert (await socket.receive_json_from())["type"] == "hello"
    return socket


async def join(socket, *rooms):
    for room in rooms:
        await socket.send_json_to({"type": "join", "room": room})
        assert (await socket.receive_json_from())["type"] == "joined"


async def gone_offline(user, timeout=5):
    """Wait until presence declared the user offline (the grace timer set the mark)."""
    deadline = asyncio.get_running_loop().time() + timeout
    while not await sync_to_async(OfflineMark.objects.filter(user=user).exists)():
        assert asyncio.get_running_loop().time() < deadline, "never went offline"
        await asyncio.sleep(0.05)


def post(user, slug, body):
    room = Room.objects.get(slug=slug)
    return services.message_post(user=user, room=room, body=body).message


async def test_the_newest_100_arrive_once_after_hello_and_the_rest_are_counted(
    alice, bob
):
    socket = await connect(alice)
    await join(socket, "lobby", "design")
    await socket.disconnect()
    await gone_offline(alice)

    posted = [
        await sync_to_async(post)(bob, ("lobby", "design")[i % 2], f"m{i}")
        for i in range(150)
    ]

    socket = await connect(alice)
    queue = await socket.receive_json_from()
    assert queue["type"] == "offline_messages"
    assert queue["dropped"] == 50
    assert [m["id"] for m in queue["messages"]] == [m["id"] for m in posted[50:]]
    assert {m["room"] for m in queue["messages"]} == {"lobby", "design"}
    assert queue["messages"][0] == posted[50]  # the contract's message object
    await socket.disconnect()

    again = await connect(alice)
    assert await again.receive_nothing(timeout=0.3)  # consumed when sent
    await again.disconnect()


async def test_own_deleted_and_non_member_rooms_are_left_out(alice, bob):
    socket = await connect(alice)
    await join(socket, "lobby")
    await socket.disconnect()
    await gone_offline(alice)
    await sync_to_async(Room.objects.create)(slug="other", name="Other")

    await sync_to_async(post)(alice, "lobby", "mine, from another device")
    await sync_to_async(post)(bob, "other", "a room alice never joined")
    deleted = await sync_to_async(post)(bob, "lobby", "deleted")
    await sync_to_async(Message.objects.filter(pk=deleted["id"]).update)(
        deleted_at=timezone.now()
    )
    kept = await sync_to_async(post)(bob, "lobby", "kept")

    socket = await connect(alice)
    queue = await socket.receive_json_from()
    assert (queue["messages"], queue["dropped"]) == ([kept], 0)
    await socket.disconnect()


async def test_a_reload_within_the_grace_period_starts_no_queue(alice, bob):
    socket = await connect(alice)
    await join(socket, "lobby")
    await socket.disconnect()
    socket = await connect(alice)  # back at once: never offline
    await asyncio.sleep(GRACE * 2)
    assert not await sync_to_async(OfflineMark.objects.exists)()
    await socket.disconnect()


async def test_a_user_who_never_connected_gets_nothing(alice, bob, lobby):
    await sync_to_async(services.room_join)(user=alice, room=lobby)
    await sync_to_async(post)(bob, "lobby", "before alice ever came")
    socket = await connect(alice)
    assert await socket.receive_nothing(timeout=0.3)
    await socket.disconnect()


def test_messages_older_than_the_max_age_are_dropped_not_delivered(
    alice, bob, lobby, settings
):
    services.room_join(user=alice, room=lobby)
    now = timezone.now()
    OfflineMark.objects.create(user=alice, since=now - timedelta(hours=30))
    old = post(bob, "lobby", "too old")
    Message.objects.filter(pk=old["id"]).update(created_at=now - timedelta(hours=25))
    fresh = post(bob, "lobby", "fresh")

    queue = services.offline_queue_take(user=alice)
    assert ([m["id"] for m in queue.messages], queue.dropped) == ([fresh["id"]], 1)
    assert services.offline_queue_take(user=alice) is None


def test_an_earlier_mark_is_kept(alice):
    now = timezone.now()
    services.offline_mark_set(user_id=alice.id, since=now - timedelta(minutes=5))
    services.offline_mark_set(user_id=alice.id, since=now)
    assert OfflineMark.objects.get(user=alice).since == now - timedelta(minutes=5)

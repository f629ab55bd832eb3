"""A process's state by socket, user and room goes back to its idle size once the
sockets, users and rooms it tracked are gone: churn never grows it for good."""

import asyncio
import time

import pytest
from asgiref.sync import sync_to_async
from channels.testing import WebsocketCommunicator

from chat import broadcast
from chat.models import Room
from chat.ratelimit import MemoryRateLimiter
from chat.tickets import MemoryTicketStore, ticket_issue
from presence.services import presence_sweep
from voiceflow.asgi import application
from voiceflow.health import structure_sizes

pytestmark = pytest.mark.django_db(transaction=True)

CHURN = 12


# Entries that end with the clock, not when their user leaves: rate-limit windows
# (tested below) and when presence events last went out (pruned past 1024 keys).
TIMED = {"rateLimitKeys", "presenceEventKeys"}


def lasting(sizes):
    return {name: size for name, size in sizes.items() if name not in TIMED}


async def frames_until(socket, kind):
    while (frame := await socket.receive_json_from(timeout=5))["type"] != kind:
        pass
    return frame


async def test_a_churn_of_users_and_rooms_leaves_every_structure_at_its_baseline(
    make_user, presence_conf
):
    presence_conf(
        OFFLINE_GRACE=0.2,
        PRESENCE_TOUCH_INTERVAL=0,
        TYPING_STOP_AFTER=5,
        PRESENCE_EVENT_INTERVAL=0,
    )
    users = [await sync_to_async(make_user)(f"churn{n}") for n in range(CHURN)]
    for n in range(CHURN):
        await Room.objects.acreate(slug=f"churn-{n}", name=f"Churn {n}")
    await broadcast.hub()  # the process's hub lives on: part of the baseline
    baseline = lasting(structure_sizes())

    for n, user in enumerate(users):
        ticket = await sync_to_async(ticket_issue)(user.pk)
        socket = WebsocketCommunicator(application, f"/ws/chat/?ticket={ticket}")
        assert (await socket.connect())[0]
        await frames_until(socket, "hello")
        for slug in (f"churn-{n}", f"churn-{(n + 1) % CHURN}"):
            await socket.send_json_to({"type": "join", "room": slug})
            await frames_until(socket, "joined")
        room = f"churn-{n}"
        await socket.send_json_to({"type": "typing", "room": room, "state": "start"})
        await socket.send_json_to(
            {"type": "message", "room": room, "body": "hi", "client_id": f"c{n}"}
        )
        await frames_until(socket, "ack")
        await socket.send_json_to({"type": "typing", "room": room, "state": "start"})
        if n % 2:  # half leave their first room first; all just go
            await socket.send_json_to({"type": "leave", "room": room})
            await frames_until(socket, "left")
        await socket.disconnect()
    assert lasting(structure_sizes()) != baseline  # grace periods still running

    # Past every grace period, and a sweep long after (away, idle and dead expiries).
    loop = asyncio.get_running_loop()
    deadline = loop.time() + 10
    while True:
        await asyncio.sleep(0.3)
        await presence_sweep(now=time.time() + 3600)
        if lasting(structure_sizes()) == baseline or loop.time() > deadline:
            break
    assert lasting(structure_sizes()) == baseline


def test_rate_limit_keys_of_users_gone_quiet_expire():
    limiter = MemoryRateLimiter()
    for user_id in range(50):
        limiter.hit_sync(f"message:{user_id}", 5, 60, now=1000.0)
    assert limiter.size() == 50

    # Far fewer checks than a sweep every 1000 needs: the window's end suffices.
    limiter.hit_sync("message:late", 5, 60, now=1061.0)
    assert limiter.size() == 1


async def test_tickets_never_redeemed_expire_without_new_ones():
    store = MemoryTicketStore()
    for n in range(50):
        store.issue(f"key{n}", n, 30, now=100.0 + n * 0.1)
    assert await store.redeem("key49", now=120.0) == 49
    assert store.size() == 49

    assert await store.redeem("unknown", now=140.0) is None
    assert store.size() == 0

"""Presence services with the clock passed in: the sweep's transitions, no sleeping."""

import json
import time

import pytest
from channels.layers import get_channel_layer

from presence.broadcast import room_group
from presence.selectors import room_presence
from presence.services import (
    presence_connect,
    presence_disconnect,
    presence_restore,
    presence_room_enter,
    presence_sweep,
)
from presence.store import presence_store

T0 = time.time()  # the grace timers of the holding process wait on the wall clock


@pytest.fixture(autouse=True)
def _now():
    """T0 is each test's own start: one from import time goes stale in a long run."""
    global T0
    T0 = time.time()


@pytest.fixture
async def lobby_events():
    """Everything sent to the lobby's room group, as the frames sockets would get."""
    layer = get_channel_layer()
    channel = await layer.new_channel()
    await layer.group_add(room_group("lobby"), channel)

    async def received(n):
        return [json.loads((await layer.receive(channel))["text"]) for _ in range(n)]

    return received


async def enter(sid, user_id, username, now=None):
    now = T0 if now is None else now
    assert await presence_connect(sid=sid, user_id=user_id, username=username, now=now)
    await presence_room_enter(
        sid=sid, user_id=user_id, username=username, slug="lobby", now=now
    )


async def test_a_sweep_after_the_grace_sends_offline_then_member_left(lobby_events):
    await enter("a1", 1, "alice")
    await presence_disconnect(sid="a1", now=T0 + 1)
    quiet = await presence_sweep(now=T0 + 5)  # within the 10 s grace
    assert (quiet.status_changes, quiet.members_left) == (0, 0)
    report = await presence_sweep(now=T0 + 12)
    assert (report.sockets_removed, report.status_changes, report.members_left) == (
        0,
        1,
        1,
    )
    assert await lobby_events(3) == [
        {"type": "member_joined", "room": "lobby", "user": "alice"},
        {"type": "presence", "user": "alice", "status": "offline"},
        {"type": "member_left", "room": "lobby", "user": "alice"},
    ]
    assert str(await presence_sweep(now=T0 + 13)) == (
        "removed 0 dead sockets, 0 status changes, 0 members left"
    )


async def test_a_sweep_removes_a_silent_socket_and_its_user_leaves_at_once(
    lobby_events,
):
    await enter("a1", 1, "alice")
    await enter("b1", 2, "bob", now=T0 + 60)  # bob's socket is younger
    report = await presence_sweep(now=T0 + 66)  # past alice's 60 s + 5 s touch slack
    assert (report.sockets_removed, report.status_changes, report.members_left) == (
        1,
        1,
        1,
    )
    frames = await lobby_events(4)
    assert frames[2:] == [
        {"type": "presence", "user": "alice", "status": "offline"},
        {"type": "member_left", "room": "lobby", "user": "alice"},
    ]


async def test_a_sweep_turns_idle_users_away(lobby_events):
    await enter("a1", 1, "alice")
    await lobby_events(1)
    # The socket kept pinging (alive), but a ping is not activity.
    await presence_store().socket_touch("a1", T0 + 290)
    assert (await presence_sweep(now=T0 + 299)).status_changes == 0
    assert (await presence_sweep(now=T0 + 300)).status_changes == 1
    assert await lobby_events(1) == [
        {"type": "presence", "user": "alice", "status": "away"}
    ]


async def test_a_resync_after_an_outage_makes_the_store_right_again(lobby_events):
    # Redis kept its data through the outage; meanwhile the socket left the lobby for
    # design and went away, none of which was stored.
    await enter("a1", 1, "alice")
    assert await presence_restore(
        sid="a1",
        user_id=1,
        username="alice",
        rooms=["design"],
        away=True,
        now=T0 + 2,
        resync=True,
    )
    assert await room_presence("design", now=T0 + 2) == [
        {"username": "alice", "status": "away", "connections": 1}
    ]
    report = await presence_sweep(now=T0 + 13)  # the lobby's grace is over
    assert report.members_left == 1
    assert await room_presence("lobby", now=T0 + 13) == []
    assert await lobby_events(2) == [
        {"type": "member_joined", "room": "lobby", "user": "alice"},
        {"type": "member_left", "room": "lobby", "user": "alice"},
    ]

"""The process hub: one layer subscription per room, events routed to local sockets."""

import asyncio

import pytest
from channels.layers import get_channel_layer

from chat import broadcast
from voiceflow.runtime.frames import text_frame


class FakeSocket:
    def __init__(self, user_id):
        self.user_id = user_id
        self.frames = []
        self.user_events = []

    def deliver(self, text, frame, ephemeral=None):
        assert frame == text_frame(text.encode())
        self.frames.append(text)

    def user_event(self, event):
        self.user_events.append(event)


@pytest.fixture
async def hub():
    return await broadcast.hub()


async def eventually(check, timeout=3.0):
    """Wait until check() holds: events come back through the layer."""
    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeout
    while not check():
        assert loop.time() < deadline, "the event did not arrive in time"
        await asyncio.sleep(0.01)


async def test_a_process_subscribes_to_a_room_once_and_leaves_with_its_last_socket(hub):
    alice, bob = FakeSocket(1), FakeSocket(2)
    await hub.room_add("lobby", alice)
    await hub.room_add("lobby", bob)
    assert hub.subscribed == {"lobby"}
    await hub.room_remove("lobby", alice)
    await broadcast.room_lock_changed("lobby", True)
    await eventually(lambda: bob.frames)
    assert alice.frames == []
    await hub.room_remove("lobby", bob)
    assert hub.subscribed == set()


async def test_a_room_event_reaches_each_local_socket_in_the_room_once(hub):
    alice, bob, elsewhere = FakeSocket(1), FakeSocket(2), FakeSocket(3)
    for socket, slug in ((alice, "lobby"), (bob, "lobby"), (elsewhere, "other")):
        await hub.room_add(slug, socket)
    await broadcast.room_lock_changed("lobby", True)
    await eventually(lambda: alice.frames and bob.frames)
    await broadcast.room_lock_changed("other", False)  # a later event, as a fence
    await eventually(lambda: elsewhere.frames)
    elsewhere.frames.clear()
    frame = '{"type":"room_locked","room":"lobby","locked":true}'
    assert (alice.frames, bob.frames, elsewhere.frames) == ([frame], [frame], [])


async def test_typing_skips_the_typists_own_sockets(hub):
    typist, other = FakeSocket(1), FakeSocket(2)
    await hub.room_add("lobby", typist)
    await hub.room_add("lobby", other)
    hub.route({"type": "typing", "room": "lobby", "user_id": 1, "text": "t"})
    assert (typist.frames, other.frames) == ([], ["t"])


async def test_a_presence_event_sent_to_several_rooms_reaches_a_socket_once(hub):
    in_both, in_one = FakeSocket(1), FakeSocket(2)
    for slug in ("a", "b"):
        await hub.room_add(slug, in_both)
    await hub.room_add("b", in_one)
    event = {"type": "presence", "id": "p1", "rooms": ["a", "b"], "text": "p"}
    hub.route(event)
    hub.route(event)  # the copy sent to the second room's group
    assert (in_both.frames, in_one.frames) == (["p"], ["p"])


async def test_user_events_reach_every_local_socket_of_that_user_only(hub):
    tab1, tab2, someone = FakeSocket(1), FakeSocket(1), FakeSocket(2)
    for socket in (tab1, tab2, someone):
        hub.socket_add(socket)
    await broadcast.user_kicked(1)
    await eventually(lambda: tab1.user_events and tab2.user_events)
    hub.socket_remove(tab2)
    await broadcast.user_muted(1, None)
    await broadcast.user_kicked(2)  # a later event, as a fence
    await eventually(lambda: someone.user_events)
    assert [len(s.user_events) for s in (tab1, tab2, someone)] == [2, 1, 1]


async def test_one_hub_per_layer(hub):
    assert await broadcast.hub() is hub
    assert hub.layer is get_channel_layer()

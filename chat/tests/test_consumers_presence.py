"""Presence and typing on the socket: who is here, away, gone, typing (both modes)."""

import asyncio

import pytest
from asgiref.sync import sync_to_async
from channels.testing import WebsocketCommunicator
from django.conf import settings

from chat import broadcast, socket_closing
from chat.models import Room
from chat.tickets import ticket_issue
from presence import services as presence_services
from presence.services import presence_sweep
from presence.store import memory_store_reset
from voiceflow.asgi import application

pytestmark = pytest.mark.django_db(transaction=True)

GRACE = 0.4


@pytest.fixture(autouse=True)
def fast_presence(presence_conf, lobby):
    Room.objects.get_or_create(slug="design", defaults={"name": "Design"})
    Room.objects.get_or_create(slug="elsewhere", defaults={"name": "Elsewhere"})
    presence_conf(
        OFFLINE_GRACE=GRACE,
        PRESENCE_TOUCH_INTERVAL=0,
        TYPING_STOP_AFTER=0.4,
        PRESENCE_EVENT_INTERVAL=0,  # events at once; the `flapping` tests set one
    )


async def connect(user):
    ticket = await sync_to_async(ticket_issue)(user.pk)
    socket = WebsocketCommunicator(application, f"/ws/chat/?ticket={ticket}")
    assert (await socket.connect())[0]
    assert (await socket.receive_json_from())["type"] == "hello"
    return socket


async def join(socket, room="lobby"):
    """Join and return the `joined` reply (earlier frames are dropped)."""
    await socket.send_json_to({"type": "join", "room": room})
    while (reply := await socket.receive_json_from())["type"] != "joined":
        pass
    return reply


async def tab(user, *rooms, first=True):
    """A socket of `user` joined to `rooms`; when it is the user's `first` there, the
    member_joined it causes reaches it too, and is consumed here."""
    socket = await connect(user)
    for room in rooms:
        await join(socket, room)
        own = {"type": "member_joined", "room": room, "user": user.username}
        while first and await socket.receive_json_from() != own:
            pass
    return socket


async def frames(socket, quiet=0.15):
    """Every frame until none arrives for `quiet` seconds."""
    got = []
    while not await socket.receive_nothing(timeout=quiet):
        got.append(await socket.receive_json_from())
    return got


def of_type(got, *types):
    return [f for f in got if f["type"] in types]


async def close(*sockets):
    for socket in sockets:
        await socket.disconnect()


async def test_joined_lists_who_is_present_and_the_rest_api_agrees(
    alice, bob, make_user, client
):
    await sync_to_async(make_user)("carol")
    alice_tabs = [await tab(alice, "lobby"), await tab(alice, "lobby", first=False)]
    bob_tab = await connect(bob)
    reply = await join(bob_tab)
    assert reply["members"] == [
        {"username": "alice", "status": "online"},
        {"username": "bob", "status": "online"},
    ]
    await sync_to_async(client.force_login)(bob)
    presence = await sync_to_async(client.get)("/api/rooms/lobby/presence/")
    assert presence.json() == {
        "users": [
            {"username": "alice", "status": "online", "connections": 2},
            {"username": "bob", "status": "online", "connections": 1},
        ]
    }
    rooms = (await sync_to_async(client.get)("/api/rooms/")).json()["results"]
    counts = {room["slug"]: room["online_count"] for room in rooms}
    assert counts == {"design": 0, "elsewhere": 0, "lobby": 2}
    detail = (await sync_to_async(client.get)("/api/rooms/lobby/")).json()
    assert detail["online_count"] == 2
    assert (
        await sync_to_async(client.get)("/api/rooms/nowhere/presence/")
    ).status_code == 404
    await close(*alice_tabs, bob_tab)


async def test_member_joined_on_the_first_socket_member_left_at_once_on_the_last_leave(
    alice, bob
):
    watcher = await tab(bob, "lobby")
    tab1 = await tab(alice, "lobby")
    tab2 = await tab(alice, "lobby", first=False)
    assert await frames(watcher) == [
        {"type": "member_joined", "room": "lobby", "user": "alice"}
    ]
    await tab1.send_json_to({"type": "leave", "room": "lobby"})
    assert await frames(watcher) == []
    await tab2.send_json_to({"type": "leave", "room": "lobby"})
    left = await watcher.receive_json_from(timeout=5)
    assert left == {"type": "member_left", "room": "lobby", "user": "alice"}
    assert await frames(watcher) == []
    await close(watcher, tab1, tab2)


async def test_closing_the_last_socket_means_offline_and_member_left_after_the_grace(
    alice, bob
):
    watcher = await tab(bob, "lobby")
    tab1 = await tab(alice, "lobby")
    tab2 = await tab(alice, "lobby", first=False)
    await frames(watcher)
    await tab1.disconnect()
    await tab2.disconnect()
    assert await frames(watcher, quiet=GRACE * 0.6) == []  # within the grace: nothing
    assert await frames(watcher, quiet=GRACE) == [
        {"type": "presence", "user": "alice", "status": "offline"},
        {"type": "member_left", "room": "lobby", "user": "alice"},
    ]
    await close(watcher)


async def test_a_reload_within_the_grace_period_sends_no_event(alice, bob, client):
    watcher = await tab(bob, "lobby")
    page = await tab(alice, "lobby")
    await frames(watcher)
    await page.disconnect()
    await asyncio.sleep(GRACE / 4)
    reloaded = await tab(alice, "lobby", first=False)
    assert await frames(watcher, quiet=GRACE * 2) == []
    await sync_to_async(client.force_login)(bob)
    users = (await sync_to_async(client.get)("/api/rooms/lobby/presence/")).json()[
        "users"
    ]
    assert {u["username"]: u["status"] for u in users} == {
        "alice": "online",
        "bob": "online",
    }
    await close(watcher, reloaded)


async def test_inactivity_turns_a_user_away_and_activity_brings_them_back(
    alice, bob, presence_conf, hand_clock, monkeypatch
):
    monkeypatch.setattr(presence_services, "clock", hand_clock)
    presence_conf(AWAY_AFTER=0.5)
    watcher = await tab(bob, "lobby")
    talker = await tab(alice, "lobby")
    await frames(watcher)
    hand_clock.now += 0.3
    await watcher.send_json_to({"type": "typing", "room": "lobby", "state": "start"})
    while (await talker.receive_json_from())["type"] != "typing":
        pass  # bob's typing reached alice: his activity is stored
    hand_clock.now += 0.3  # alice idle 0.6 s, bob 0.3 s
    report = await presence_sweep()
    assert report.status_changes == 1
    assert of_type(await frames(watcher), "presence") == [
        {"type": "presence", "user": "alice", "status": "away"}
    ]
    await talker.send_json_to({"type": "message", "room": "lobby", "body": "back"})
    assert of_type(await frames(watcher), "presence") == [
        {"type": "presence", "user": "alice", "status": "online"}
    ]
    await close(watcher, talker)


async def test_status_away_counts_only_when_every_socket_says_it(alice, bob):
    watcher = await tab(bob, "lobby")
    visible, hidden = await tab(alice, "lobby"), await tab(alice)
    await frames(watcher)
    await hidden.send_json_to({"type": "status", "status": "away"})
    assert await frames(watcher) == []
    await visible.send_json_to({"type": "status", "status": "away"})
    assert await frames(watcher) == [
        {"type": "presence", "user": "alice", "status": "away"}
    ]
    await hidden.send_json_to({"type": "status", "status": "online"})
    assert await frames(watcher) == [
        {"type": "presence", "user": "alice", "status": "online"}
    ]
    await close(watcher, visible, hidden)


async def test_presence_reaches_each_socket_sharing_a_room_once_and_no_one_else(
    alice, bob, make_user
):
    carol, dave = [await sync_to_async(make_user)(name) for name in ("carol", "dave")]
    subject = await tab(alice, "lobby", "design")
    both_rooms = await tab(bob, "lobby", "design")
    elsewhere = await tab(carol, "elsewhere")
    roomless = await tab(dave)
    for socket in (both_rooms, elsewhere, roomless):
        await frames(socket)
    await subject.send_json_to({"type": "status", "status": "away"})
    assert await frames(both_rooms) == [
        {"type": "presence", "user": "alice", "status": "away"}
    ]
    assert await frames(elsewhere) == []
    assert await frames(roomless) == []
    assert of_type(await frames(subject), "presence") == [
        {"type": "presence", "user": "alice", "status": "away"}
    ]
    await close(subject, both_rooms, elsewhere, roomless)


async def test_typing_is_throttled_stops_by_itself_and_never_echoes(alice, bob):
    listener = await tab(bob, "lobby")
    typist, other_tab = (
        await tab(alice, "lobby"),
        await tab(alice, "lobby", first=False),
    )
    for socket in (listener, typist, other_tab):
        await frames(socket)
    start = {"type": "typing", "room": "lobby", "state": "start"}
    await typist.send_json_to(start)
    await typist.send_json_to(start)  # within a second: not forwarded again
    assert await listener.receive_json_from() == {
        "type": "typing",
        "room": "lobby",
        "user": "alice",
        "state": "start",
    }
    assert await listener.receive_nothing(timeout=0.2)
    # Stopped on alice's behalf 0.4 s after her last start.
    stop = await listener.receive_json_from(timeout=1)
    assert stop == {"type": "typing", "room": "lobby", "user": "alice", "state": "stop"}
    assert await frames(typist) == [] and await frames(other_tab) == []
    await close(listener, typist, other_tab)


async def test_typing_stops_on_message_leave_and_disconnect(alice, bob):
    listener = await tab(bob, "lobby")
    typist = await tab(alice, "lobby")
    await frames(listener)
    start = {"type": "typing", "room": "lobby", "state": "start"}

    async def typing_states():
        """The typing states bob sees, up to the next stop (a store may be slow)."""
        states = []
        while states[-1:] != ["stop"]:
            frame = await listener.receive_json_from(timeout=5)
            if frame["type"] == "typing":
                states.append(frame["state"])
        return states

    await typist.send_json_to(start)
    await typist.send_json_to({"type": "message", "room": "lobby", "body": "done"})
    assert await typing_states() == ["start", "stop"]
    await typist.send_json_to(start)  # forwarded at once after a stop
    await typist.send_json_to({"type": "leave", "room": "lobby"})
    assert await typing_states() == ["start", "stop"]
    await join(typist)
    await typist.send_json_to(start)
    await asyncio.sleep(0.05)
    await typist.disconnect()
    assert await typing_states() == ["start", "stop"]
    await close(listener)


async def test_a_typing_frame_for_an_unjoined_room_is_refused(alice):
    socket = await tab(alice)
    await socket.send_json_to({"type": "typing", "room": "lobby", "state": "start"})
    assert (await socket.receive_json_from())["code"] == "forbidden"
    await socket.send_json_to({"type": "typing", "room": "nowhere", "state": "start"})
    assert (await socket.receive_json_from())["code"] == "not_found"
    await close(socket)


async def test_more_live_sockets_than_allowed_are_closed_with_4429(
    alice, presence_conf
):
    presence_conf(MAX_SOCKETS_PER_USER=2)
    tabs = [await connect(alice), await connect(alice)]
    ticket = await sync_to_async(ticket_issue)(alice.pk)
    third = WebsocketCommunicator(application, f"/ws/chat/?ticket={ticket}")
    assert (await third.connect())[0]
    assert await third.receive_output() == {"type": "websocket.close", "code": 4429}
    await tabs[0].disconnect()
    fourth = await connect(alice)  # a slot is free again
    await close(tabs[1], fourth)


async def test_a_silent_socket_is_closed_with_4408_and_leaves_presence(
    alice, client, presence_conf
):
    presence_conf(DEAD_AFTER=0.8, OFFLINE_GRACE=0)
    socket = await tab(alice, "lobby")
    await asyncio.sleep(0.5)
    await socket.send_json_to({"type": "ping", "ts": 1})  # a frame resets the timer
    assert (await socket.receive_json_from())["type"] == "pong"
    await asyncio.sleep(0.5)
    assert await socket.receive_nothing(timeout=0.01)
    closed = await socket.receive_output(timeout=1)
    assert closed == {"type": "websocket.close", "code": 4408}
    await asyncio.sleep(0.1)  # the (zero) grace timer settles the departure
    await sync_to_async(client.force_login)(alice)
    users = (await sync_to_async(client.get)("/api/rooms/lobby/presence/")).json()[
        "users"
    ]
    assert users == []


async def test_a_socket_is_looked_at_once_per_dead_timeout_and_closed_right_on_it(
    alice, presence_conf, monkeypatch
):
    dead_after = 0.3
    presence_conf(DEAD_AFTER=dead_after, OFFLINE_GRACE=0)
    checks = []
    check = socket_closing._silence_due

    def counted(*args):
        checks.append(args)
        check(*args)

    monkeypatch.setattr(socket_closing, "_silence_due", counted)
    socket = await tab(alice, "lobby")
    loop = asyncio.get_running_loop()
    started = heard = loop.time()
    while heard - started < 3 * dead_after:
        await socket.send_json_to({"type": "ping", "ts": 1})
        assert (await socket.receive_json_from())["type"] == "pong"
        heard = loop.time()  # the server had the frame by then
        await asyncio.sleep(dead_after / 20)
    # Dozens of frames, and no check per frame or per tick: one per dead timeout.
    assert len(checks) <= 4

    closed = await socket.receive_output(timeout=1)
    silent_for = loop.time() - heard
    assert closed == {"type": "websocket.close", "code": 4408}
    assert dead_after - 0.01 <= silent_for < dead_after + 0.25
    assert len(checks) <= 5


async def test_a_closed_socket_leaves_no_silence_timer_behind(alice, presence_conf):
    presence_conf(DEAD_AFTER=0.2)
    socket = await tab(alice, "lobby")
    consumer = next(iter((await broadcast.hub()).sockets))
    timer = consumer.silence_timer
    await socket.disconnect()
    # Cancelled: the loop holds neither it nor the socket until it was due.
    assert timer.cancelled() and consumer.silence_timer is None


async def test_nothing_reaches_a_socket_after_the_server_closed_it(
    alice, bob, presence_conf
):
    # uvicorn raises on a send after close, which killed the consumer mid-event.
    presence_conf(DEAD_AFTER=0.6, OFFLINE_GRACE=0)
    silent = await tab(alice, "lobby")
    while (output := await silent.receive_output(timeout=2))[
        "type"
    ] != "websocket.close":
        pass
    assert output["code"] == 4408
    other = await tab(bob, "lobby")  # the room hears member_joined: not this socket
    assert await silent.receive_nothing(timeout=0.3)
    await close(silent, other)


async def test_the_embedded_process_sweeps_itself_a_shared_one_leaves_it_to_the_sweeper(
    alice, bob, presence_conf
):
    presence_conf(AWAY_AFTER=0.3, PRESENCE_SWEEP_INTERVAL=0.1)
    watcher = await tab(bob, "lobby")
    idle = await tab(alice, "lobby")
    await frames(watcher, quiet=0.05)
    got = of_type(await frames(watcher, quiet=0.6), "presence")
    if settings.REDIS_URL:
        assert got == []  # `sweep_presence --loop` does it in a process of its own
        await presence_sweep()
        got = of_type(await frames(watcher), "presence")
    assert {(f["user"], f["status"]) for f in got} == {
        ("alice", "away"),
        ("bob", "away"),
    }
    await close(watcher, idle)


async def test_a_user_is_listed_through_the_grace_until_member_left(
    alice, bob, make_user, client, presence_conf
):
    presence_conf(OFFLINE_GRACE=1.5)  # time for the reads below
    carol = await sync_to_async(make_user)("carol")
    watcher = await tab(bob, "lobby")
    page = await tab(alice, "lobby")
    await page.send_json_to({"type": "status", "status": "away"})
    await frames(watcher)
    await page.disconnect()
    await sync_to_async(client.force_login)(bob)

    async def listed():
        """(presence endpoint, online_count, a new socket's joined.members)."""
        users = (await sync_to_async(client.get)("/api/rooms/lobby/presence/")).json()
        room = (await sync_to_async(client.get)("/api/rooms/lobby/")).json()
        other = await connect(carol)
        members = (await join(other))["members"]
        await close(other)
        return users["users"], room["online_count"], members

    # Within the grace: still present, with the status alice had, no socket left.
    users, count, members = await listed()
    assert users == [
        {"username": "alice", "status": "away", "connections": 0},
        {"username": "bob", "status": "online", "connections": 1},
    ]
    assert count == 2
    assert {"username": "alice", "status": "away"} in members
    got = await frames(watcher, quiet=1.6)
    assert [f for f in of_type(got, "member_left") if f["user"] == "alice"] == [
        {"type": "member_left", "room": "lobby", "user": "alice"}
    ]
    users, count, members = await listed()
    assert [u["username"] for u in users] == ["bob"]
    assert count == 1
    assert "alice" not in [m["username"] for m in members]
    await close(watcher)


async def forget_all_presence():
    """What a Redis restarted without persistence (or a fresh process twin) knows."""
    if not settings.REDIS_URL:
        memory_store_reset()
        return
    import redis.asyncio as aioredis

    client = aioredis.Redis.from_url(settings.REDIS_URL)
    keys = [
        k async for k in client.scan_iter(f"{settings.REDIS_KEY_PREFIX}:presence:*")
    ]
    await client.delete(*keys)
    await client.aclose()


async def test_a_socket_the_store_forgot_is_registered_again_not_closed(
    alice, bob, client
):
    watcher = await tab(bob, "lobby")
    page = await tab(alice, "lobby", "design")
    await page.send_json_to({"type": "status", "status": "away"})
    await frames(watcher)
    await frames(page)
    await forget_all_presence()
    await page.send_json_to({"type": "ping", "ts": 1})  # its next frame asks the store
    assert (await page.receive_json_from())["type"] == "pong"
    await watcher.send_json_to({"type": "ping", "ts": 2})
    assert (await watcher.receive_json_from())["type"] == "pong"
    await sync_to_async(client.force_login)(bob)
    for room in ("lobby", "design"):
        users = (await sync_to_async(client.get)(f"/api/rooms/{room}/presence/")).json()
        assert {"username": "alice", "status": "away", "connections": 1} in users[
            "users"
        ]
    # Nobody saw them go, so nobody hears they are back; the socket stays open.
    assert await frames(watcher) == [] and await frames(page) == []
    await page.send_json_to({"type": "message", "room": "lobby", "body": "still here"})
    while (got := await watcher.receive_json_from(timeout=5))["type"] != "message":
        pass
    assert got["body"] == "still here"
    assert of_type(await frames(watcher), "message") == []
    await close(watcher, page)


INTERVAL = 0.5  # the test's PRESENCE_EVENT_INTERVAL


@pytest.fixture
def flapping(presence_conf, set_rate):
    presence_conf(PRESENCE_EVENT_INTERVAL=INTERVAL)
    set_rate("presence", 1000)


@pytest.mark.parametrize("toggles", [20, 21])
async def test_status_toggles_make_one_presence_event_a_second_and_the_last_wins(
    alice, bob, client, flapping, toggles
):
    watcher = await tab(bob, "lobby")
    page = await tab(alice, "lobby")
    await frames(watcher)
    started = asyncio.get_running_loop().time()
    for i in range(toggles):  # away, online, away, ...: ends away when odd
        status = "away" if i % 2 == 0 else "online"
        await page.send_json_to({"type": "status", "status": status})
    final = "away" if toggles % 2 else "online"
    # Every event, until none came for two intervals (a waiting one comes in one).
    got = of_type(await frames(watcher, quiet=INTERVAL * 2), "presence")
    took = asyncio.get_running_loop().time() - started
    assert len(got) <= 1 + took / INTERVAL, got  # at once, then one an interval
    seen = ["online"] + [f["status"] for f in got]  # from what was announced
    assert seen[-1] == final, got  # the last transition is never lost
    assert all(a != b for a, b in zip(seen, seen[1:])), got  # only real changes
    await sync_to_async(client.force_login)(bob)
    users = (await sync_to_async(client.get)("/api/rooms/lobby/presence/")).json()
    assert {"username": "alice", "status": final, "connections": 1} in users["users"]
    await close(watcher, page)


@pytest.mark.parametrize("ends_joined", [False, True])
async def test_room_flapping_makes_one_member_event_a_second_and_the_last_wins(
    alice, bob, client, flapping, ends_joined
):
    watcher = await tab(bob, "lobby")
    page = await tab(alice, "design")  # alice's presence in the lobby flaps
    await frames(watcher)
    started = asyncio.get_running_loop().time()
    for _ in range(25):
        await page.send_json_to({"type": "join", "room": "lobby"})
        await page.send_json_to({"type": "leave", "room": "lobby"})
    if ends_joined:
        await page.send_json_to({"type": "join", "room": "lobby"})
    got = of_type(
        await frames(watcher, quiet=INTERVAL * 2), "member_joined", "member_left"
    )
    took = asyncio.get_running_loop().time() - started
    assert len(got) <= 1 + took / INTERVAL, got
    assert got[0] == {"type": "member_joined", "room": "lobby", "user": "alice"}
    assert all(a["type"] != b["type"] for a, b in zip(got, got[1:])), got
    assert got[-1]["type"] == ("member_joined" if ends_joined else "member_left")
    await sync_to_async(client.force_login)(bob)
    users = (await sync_to_async(client.get)("/api/rooms/lobby/presence/")).json()
    listed = [u["username"] for u in users["users"]]
    assert ("alice" in listed) is ends_joined
    await close(watcher, page)

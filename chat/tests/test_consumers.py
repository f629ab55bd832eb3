import asyncio
import json
import time

import hypothesis
import pytest
from asgiref.sync import sync_to_async
from django.test import override_settings
from hypothesis import strategies as st

from chat import ratelimit, services
from chat.consumers import _start_eagerly
from chat.models import Membership, Message, Room
from chat.tests.sockets import QuietCommunicator
from chat.tickets import ticket_issue
from voiceflow.asgi import application

pytestmark = pytest.mark.django_db(transaction=True)


async def open_socket(user=None, *, origin=None, ticket=None, query=None):
    """A connected communicator; the hello frame is not consumed."""
    if query is None:
        if ticket is None and user is not None:
            ticket = await sync_to_async(ticket_issue)(user.pk)
        query = f"?ticket={ticket}" if ticket else ""
    headers = [(b"host", b"127.0.0.1:8000")]
    headers += [(b"origin", origin.encode())] if origin else []
    socket = QuietCommunicator(application, f"/ws/chat/{query}", headers=headers)
    connected, _ = await socket.connect()
    assert connected
    return socket


async def signed_in(user):
    socket = await open_socket(user)
    hello = await socket.receive_json_from()
    assert hello["type"] == "hello"
    return socket


async def joined(user, room="lobby", **join):
    socket = await signed_in(user)
    await socket.send_json_to({"type": "join", "room": room, **join})
    reply = await socket.receive_json_from()
    assert reply["type"] == "joined", reply
    return socket


async def send_message(socket, body="hi", client_id=None, room="lobby"):
    await socket.send_json_to(
        {"type": "message", "room": room, "body": body, "client_id": client_id}
    )


async def assert_still_serving(socket):
    await socket.send_json_to({"type": "ping", "ts": 123})
    pong = await socket.receive_json_from()
    assert pong["type"] == "pong" and pong["ts"] == 123
    assert isinstance(pong["server_ts"], int)


async def assert_closed_with(socket, code):
    output = await socket.receive_output()
    assert output == {"type": "websocket.close", "code": code}


@pytest.fixture
def room(db):
    return Room.objects.get_or_create(slug="lobby", defaults={"name": "Lobby"})[0]


async def test_hello_names_the_user_and_the_heartbeat(alice, room):
    socket = await open_socket(alice)
    hello = await socket.receive_json_from()
    assert hello["user"] == "alice"
    assert hello["heartbeat_interval"] == 25
    assert hello["connection_id"]
    assert hello["limits"]["max_frame_bytes"] == 65536
    await socket.disconnect()


async def test_a_socket_without_credentials_is_closed_with_4401(room):
    socket = await open_socket(query="")
    await assert_closed_with(socket, 4401)


async def test_a_socket_on_an_unknown_path_is_refused_at_the_handshake():
    socket = QuietCommunicator(application, "/ws/nowhere/")
    connected, _code = await socket.connect()
    assert not connected


async def test_an_unknown_ticket_is_closed_with_4401(room):
    socket = await open_socket(query="?ticket=forged")
    await assert_closed_with(socket, 4401)


async def test_a_ticket_works_once(alice, room):
    ticket = await sync_to_async(ticket_issue)(alice.pk)
    first = await open_socket(ticket=ticket)
    assert (await first.receive_json_from())["type"] == "hello"
    second = await open_socket(ticket=ticket)
    await assert_closed_with(second, 4401)
    await first.disconnect()


@override_settings(
    VOICEFLOW={**__import__("django.conf").conf.settings.VOICEFLOW, "TICKET_TTL": 1}
)
async def test_an_expired_ticket_is_refused(alice, room):
    ticket = await sync_to_async(ticket_issue)(alice.pk)
    await asyncio.sleep(1.2)
    socket = await open_socket(ticket=ticket)
    await assert_closed_with(socket, 4401)


async def test_the_session_cookie_authenticates_a_browser(alice, room, client):
    await sync_to_async(client.force_login)(alice)
    cookie = f"sessionid={client.cookies['sessionid'].value}"
    socket = QuietCommunicator(
        application,
        "/ws/chat/",
        headers=[
            (b"cookie", cookie.encode()),
            (b"host", b"127.0.0.1:8000"),
            (b"origin", b"http://127.0.0.1:8000"),
        ],
    )
    assert (await socket.connect())[0]
    assert (await socket.receive_json_from())["user"] == "alice"
    await socket.disconnect()


async def test_a_session_cookie_after_logout_is_refused(alice, room, client):
    await sync_to_async(client.force_login)(alice)
    cookie = f"sessionid={client.cookies['sessionid'].value}"
    await sync_to_async(client.logout)()
    socket = QuietCommunicator(
        application,
        "/ws/chat/",
        headers=[
            (b"cookie", cookie.encode()),
            (b"host", b"127.0.0.1:8000"),
            (b"origin", b"http://127.0.0.1:8000"),
        ],
    )
    await socket.connect()
    await assert_closed_with(socket, 4401)


@pytest.mark.parametrize(
    "origin",
    [
        "http://evil.example",
        "null",
        "http://127.0.0.1.evil.example",
        "http://127.0.0.1:9999",
        "https://127.0.0.1:8000",
    ],
)
async def test_a_foreign_origin_is_closed_with_4403(alice, room, origin):
    socket = await open_socket(alice, origin=origin)
    await assert_closed_with(socket, 4403)


@pytest.mark.parametrize("origin", [None, "http://127.0.0.1:8000"])
async def test_allowed_and_missing_origins_are_served(alice, room, origin):
    socket = await open_socket(alice, origin=origin)
    assert (await socket.receive_json_from())["type"] == "hello"
    await socket.disconnect()


async def test_a_message_reaches_every_socket_of_the_room_and_is_acked(
    alice, bob, room
):
    alice_tab1 = await joined(alice)
    alice_tab2 = await joined(alice)
    bob_tab = await joined(bob)
    await send_message(alice_tab1, "hello room", "c-1")
    ack = await alice_tab1.receive_json_from()
    assert ack["type"] == "ack"
    assert {k: ack[k] for k in ("client_id", "seq", "room")} == {
        "client_id": "c-1",
        "seq": 1,
        "room": "lobby",
    }
    for socket in (alice_tab1, alice_tab2, bob_tab):
        event = await socket.receive_json_from()
        assert event["type"] == "message"
        assert event["id"] == ack["id"] and event["body"] == "hello room"
        assert event["user"] == "alice" and event["created_at"] == ack["created_at"]
    for socket in (alice_tab1, alice_tab2, bob_tab):
        assert await socket.receive_nothing()
        await socket.disconnect()


async def test_join_makes_a_member_and_reports_the_last_seq(alice, room):
    await sync_to_async(Message.objects.create)(room=room, seq=1, user=alice, body="x")
    await sync_to_async(Room.objects.filter(pk=room.pk).update)(last_seq=1)
    socket = await signed_in(alice)
    await socket.send_json_to({"type": "join", "room": "lobby"})
    reply = await socket.receive_json_from()
    assert reply == {
        "type": "joined",
        "room": "lobby",
        "last_seq": 1,
        "members": reply["members"],
        "missed": [],
        "truncated": False,
        "last_change": 0,
        "changed": [],
        "changed_truncated": False,
    }
    assert await sync_to_async(
        Membership.objects.filter(user=alice, room=room).exists
    )()
    await socket.disconnect()


async def test_join_with_since_returns_exactly_the_missed_messages_in_order(
    alice, bob, room
):
    sender = await joined(alice)
    for i in range(5):
        await send_message(sender, f"m{i}", f"c{i}")
        await sender.receive_json_from()  # ack
        await sender.receive_json_from()  # broadcast
    late = await signed_in(bob)
    await late.send_json_to({"type": "join", "room": "lobby", "since": 2})
    reply = await late.receive_json_from()
    assert [m["seq"] for m in reply["missed"]] == [3, 4, 5]
    assert [m["body"] for m in reply["missed"]] == ["m2", "m3", "m4"]
    assert reply["last_seq"] == 5 and reply["truncated"] is False
    await sender.disconnect()
    await late.disconnect()


async def test_join_since_is_capped_and_says_truncated(alice, room, settings):
    settings.VOICEFLOW = {**settings.VOICEFLOW, "MISSED_LIMIT": 3}
    await sync_to_async(Message.objects.bulk_create)(
        [Message(room=room, seq=i, user=alice, body=str(i)) for i in range(1, 8)]
    )
    await sync_to_async(Room.objects.filter(pk=room.pk).update)(last_seq=7)
    socket = await signed_in(alice)
    await socket.send_json_to({"type": "join", "room": "lobby", "since": 1})
    reply = await socket.receive_json_from()
    assert [m["seq"] for m in reply["missed"]] == [2, 3, 4]
    assert reply["truncated"] is True and reply["last_seq"] == 7
    await socket.disconnect()


async def test_leave_stops_delivery_to_that_socket(alice, bob, room):
    listener = await joined(bob)
    sender = await joined(alice)
    await listener.send_json_to({"type": "leave", "room": "lobby"})
    assert await listener.receive_json_from() == {"type": "left", "room": "lobby"}
    await send_message(sender, "after leave")
    assert (await sender.receive_json_from())["type"] == "ack"
    assert await listener.receive_nothing()
    await listener.disconnect()
    await sender.disconnect()


async def test_a_repeated_client_id_is_acked_again_but_not_broadcast_again(
    alice, bob, room
):
    sender = await joined(alice)
    listener = await joined(bob)
    await send_message(sender, "once", "dup-1")
    first_ack = await sender.receive_json_from()
    await sender.receive_json_from()  # broadcast
    assert (await listener.receive_json_from())["id"] == first_ack["id"]
    await send_message(sender, "once", "dup-1")
    assert await sender.receive_json_from() == first_ack
    assert await sender.receive_nothing()
    assert await listener.receive_nothing()
    assert await sync_to_async(Message.objects.count)() == 1
    await sender.disconnect()
    await listener.disconnect()


async def test_one_client_id_sent_from_two_sockets_at_once_is_stored_and_broadcast_once(
    alice, bob, room
):
    tab1 = await joined(alice)
    tab2 = await joined(alice)
    listener = await joined(bob)
    await asyncio.gather(
        send_message(tab1, "racing", "race-1"), send_message(tab2, "racing", "race-1")
    )
    frames = [await tab1.receive_json_from() for _ in range(2)]
    frames += [await tab2.receive_json_from() for _ in range(2)]
    acks = [f for f in frames if f["type"] == "ack"]
    assert len(acks) == 2 and acks[0] == acks[1]
    assert (await listener.receive_json_from())["id"] == acks[0]["id"]
    assert await listener.receive_nothing()
    assert await sync_to_async(Message.objects.count)() == 1
    for socket in (tab1, tab2, listener):
        await socket.disconnect()


BAD_FRAMES = [
    ("not json", "{nope", "invalid", None),
    ("not an object", "[1, 2]", "invalid", None),
    ("a string", '"join"', "invalid", None),
    ("unknown type", {"type": "dance"}, "invalid", "dance"),
    ("no type", {"room": "lobby"}, "invalid", None),
    ("message without room", {"type": "message", "body": "x"}, "invalid", "message"),
    ("join without room", {"type": "join"}, "invalid", "join"),
    (
        "join of an unknown room",
        {"type": "join", "room": "nowhere"},
        "not_found",
        "join",
    ),
    (
        "join of a malformed slug",
        {"type": "join", "room": "No Such!"},
        "not_found",
        "join",
    ),
    (
        "join with a bad since",
        {"type": "join", "room": "lobby", "since": "x"},
        "invalid",
        "join",
    ),
    (
        "message to an unknown room",
        {"type": "message", "room": "nowhere", "body": "x"},
        "not_found",
        "message",
    ),
    (
        "message to an unjoined room",
        {"type": "message", "room": "lobby", "body": "x", "client_id": "c-9"},
        "forbidden",
        "message",
    ),
    ("ping with a bad ts", {"type": "ping", "ts": "soon"}, "invalid", "ping"),
    ("ping without a ts", {"type": "ping"}, "invalid", "ping"),
    ("ping with a null ts", {"type": "ping", "ts": None}, "invalid", "ping"),
    ("ping with a boolean ts", {"type": "ping", "ts": True}, "invalid", "ping"),
]


@pytest.mark.parametrize(
    "name,frame,code,request_type", BAD_FRAMES, ids=[b[0] for b in BAD_FRAMES]
)
async def test_a_bad_frame_gets_an_error_and_the_socket_keeps_serving(
    alice, room, name, frame, code, request_type
):
    socket = await signed_in(alice)
    await socket.send_to(
        text_data=frame if isinstance(frame, str) else json.dumps(frame)
    )
    error = await socket.receive_json_from()
    assert error["type"] == "error"
    assert error["code"] == code
    assert error["request"] == request_type
    assert error["detail"]
    assert error["ref"] == (frame.get("client_id") if isinstance(frame, dict) else None)
    await assert_still_serving(socket)
    assert not await sync_to_async(Message.objects.exists)()
    await socket.disconnect()


@pytest.mark.parametrize("body", ["", "   ", "x" * 4001, "a\x00b", None])
async def test_a_bad_body_is_invalid_with_its_client_id_as_ref(alice, room, body):
    socket = await joined(alice)
    await send_message(socket, body, "c-bad")
    error = await socket.receive_json_from()
    assert (error["type"], error["code"], error["request"], error["ref"]) == (
        "error",
        "invalid",
        "message",
        "c-bad",
    )
    await assert_still_serving(socket)
    assert not await sync_to_async(Message.objects.exists)()
    await socket.disconnect()


async def test_a_frame_over_64_kib_closes_the_socket_with_1009(alice, room):
    socket = await joined(alice)
    await socket.send_to(text_data=json.dumps({"type": "ping", "pad": "x" * 65536}))
    await assert_closed_with(socket, 1009)
    assert not await sync_to_async(Message.objects.exists)()


async def test_a_frame_of_exactly_64_kib_is_served(alice, room):
    socket = await joined(alice)
    frame = json.dumps({"type": "ping", "ts": 1, "pad": ""})
    frame = frame.replace('"pad": ""', '"pad": "' + "x" * (65536 - len(frame)) + '"')
    assert len(frame.encode()) == 65536
    await socket.send_to(text_data=frame)
    assert (await socket.receive_json_from())["type"] == "pong"
    await socket.disconnect()


async def test_a_binary_frame_is_invalid(alice, room):
    socket = await signed_in(alice)
    await socket.send_to(bytes_data=b'{"type": "ping"}')
    error = await socket.receive_json_from()
    assert error["code"] == "invalid"
    await assert_still_serving(socket)
    await socket.disconnect()


async def test_a_locked_room_refuses_posts_but_still_lets_people_read(alice, room):
    socket = await joined(alice)
    await sync_to_async(Room.objects.filter(pk=room.pk).update)(is_locked=True)
    await send_message(socket, "anyone?", "c-locked")
    error = await socket.receive_json_from()
    assert (error["code"], error["ref"]) == ("forbidden", "c-locked")
    await socket.send_json_to({"type": "join", "room": "lobby", "since": 0})
    assert (await socket.receive_json_from())["type"] == "joined"
    await socket.disconnect()


async def test_a_message_posted_over_rest_reaches_sockets(alice, bob, room, client):
    listener = await joined(bob)
    await sync_to_async(client.force_login)(alice)
    response = await sync_to_async(client.post)(
        "/api/rooms/lobby/messages/",
        {"body": "from a bot", "client_id": "rest-1"},
        content_type="application/json",
    )
    assert response.status_code == 201
    event = await listener.receive_json_from()
    assert event["type"] == "message" and event["body"] == "from a bot"
    assert event["id"] == response.json()["id"]
    await listener.disconnect()


# Rate limits (PROTOCOL.md "Rate limits") and the Redis-down behaviour.


async def fill_message_limit(socket, count, listeners=()):
    for i in range(count):
        await send_message(socket, f"m{i}", f"fill-{i}")
        assert (await socket.receive_json_from())["type"] == "ack"
        for receiver in (socket, *listeners):
            assert (await receiver.receive_json_from())["type"] == "message"


async def test_the_31st_message_in_a_minute_is_refused_with_an_honest_retry_after(
    alice, bob, room
):
    sender = await joined(alice)
    listener = await joined(bob)
    first_sent = time.time()
    await fill_message_limit(sender, 30, [listener])
    await send_message(sender, "one too many", "c-31")
    error = await sender.receive_json_from()
    refused_at = time.time()
    assert (error["type"], error["code"], error["request"], error["ref"]) == (
        "error",
        "rate_limited",
        "message",
        "c-31",
    )
    # Honest: the first of the 30 leaves the window 60 s after it was counted.
    assert abs(error["retry_after"] - (first_sent + 60 - refused_at)) < 1
    assert await listener.receive_nothing()
    assert await sync_to_async(Message.objects.count)() == 30
    await assert_still_serving(sender)
    for socket in (sender, listener):
        await socket.disconnect()


async def test_a_resend_at_the_limit_still_gets_its_original_ack(alice, room):
    sender = await joined(alice)
    await fill_message_limit(sender, 30)
    stored = await sync_to_async(Message.objects.get)(client_id="fill-0")
    await send_message(sender, "m0", "fill-0")
    ack = await sender.receive_json_from()
    assert (ack["type"], ack["id"], ack["seq"]) == ("ack", stored.id, stored.seq)
    assert await sender.receive_nothing()
    await sender.disconnect()


async def test_replays_are_not_counted(alice, room, set_rate):
    set_rate("message", 2)
    sender = await joined(alice)
    await fill_message_limit(sender, 1)
    for _ in range(5):
        await send_message(sender, "m0", "fill-0")
        assert (await sender.receive_json_from())["type"] == "ack"
    await send_message(sender, "second new one", "new-2")
    assert (await sender.receive_json_from())["type"] == "ack"
    await sender.disconnect()


async def test_messages_are_allowed_again_once_the_window_slides(
    alice, room, set_rate, hand_clock, monkeypatch
):
    monkeypatch.setattr(ratelimit, "clock", hand_clock)  # the window slides by hand
    set_rate("message", 3, window=1)
    sender = await joined(alice)
    await fill_message_limit(sender, 3)
    await send_message(sender, "too soon", "soon")
    error = await sender.receive_json_from()
    assert error["code"] == "rate_limited" and 0 < error["retry_after"] <= 1
    hand_clock.now += error["retry_after"] + 0.05
    await send_message(sender, "now", "soon")
    assert (await sender.receive_json_from())["type"] == "ack"
    await sender.disconnect()


async def test_rest_and_socket_messages_share_one_limit(alice, room, client, set_rate):
    set_rate("message", 4)
    socket = await joined(alice)
    await sync_to_async(client.force_login)(alice)

    def rest_post(client_id):
        return client.post(
            "/api/rooms/lobby/messages/",
            {"body": "over rest", "client_id": client_id},
            content_type="application/json",
        )

    for i in range(2):
        assert (await sync_to_async(rest_post)(f"rest-{i}")).status_code == 201
        assert (await socket.receive_json_from())["type"] == "message"
    await fill_message_limit(socket, 2)
    await send_message(socket, "fifth", "ws-5")
    assert (await socket.receive_json_from())["code"] == "rate_limited"
    refused = await sync_to_async(rest_post)("rest-5")
    assert refused.status_code == 429 and int(refused["Retry-After"]) >= 1
    assert refused.json()["code"] == "rate_limited"
    assert await sync_to_async(Message.objects.count)() == 4
    await socket.disconnect()


async def test_joins_are_limited_but_re_joins_never_count(alice, room, set_rate):
    set_rate("join", 2)
    for slug in ("r1", "r2"):
        await sync_to_async(Room.objects.create)(slug=slug, name=slug)
    socket = await joined(alice)  # 1: lobby
    for _ in range(3):  # re-joins, also from another socket: free
        await socket.send_json_to({"type": "join", "room": "lobby", "since": 0})
        assert (await socket.receive_json_from())["type"] == "joined"
    other_tab = await joined(alice)
    await socket.send_json_to({"type": "join", "room": "r1"})  # 2
    assert (await socket.receive_json_from())["type"] == "joined"
    await socket.send_json_to({"type": "join", "room": "r2"})  # 3: over
    error = await socket.receive_json_from()
    assert (error["code"], error["request"]) == ("rate_limited", "join")
    assert 59 < error["retry_after"] <= 60
    assert not await sync_to_async(Membership.objects.filter(room__slug="r2").exists)()
    await other_tab.send_json_to({"type": "join", "room": "r1"})  # a member: allowed
    assert (await other_tab.receive_json_from())["type"] == "joined"
    for tab in (socket, other_tab):
        await tab.disconnect()


async def test_re_joins_leaves_and_status_share_a_limit_of_their_own(
    alice, room, set_rate, client
):
    set_rate("presence", 4)
    set_rate("join", 1)
    socket = await joined(alice)  # a socket's first join of a room: never counted
    for frame, reply in [
        ({"type": "join", "room": "lobby", "since": 0}, "joined"),  # 1: a re-join
        ({"type": "status", "status": "away"}, None),  # 2
        ({"type": "status", "status": "online"}, None),  # 3
        ({"type": "leave", "room": "lobby"}, "left"),  # 4
        ({"type": "join", "room": "lobby", "since": 0}, "joined"),  # after its leave
    ]:
        await socket.send_json_to(frame)
        if reply:
            assert (await socket.receive_json_from())["type"] == reply
    assert await socket.receive_nothing()
    for frame in [
        {"type": "status", "status": "away"},
        {"type": "join", "room": "lobby", "since": 0},
        {"type": "leave", "room": "lobby"},
    ]:
        await socket.send_json_to(frame)
        error = await socket.receive_json_from()
        assert (error["type"], error["code"], error["request"]) == (
            "error",
            "rate_limited",
            frame["type"],
        )
        assert 59 < error["retry_after"] <= 60
    # Nothing refused took effect: still joined, still online.
    await sync_to_async(client.force_login)(alice)
    users = (await sync_to_async(client.get)("/api/rooms/lobby/presence/")).json()
    assert users["users"] == [
        {"username": "alice", "status": "online", "connections": 1}
    ]
    await send_message(socket, "still joined", "c-1")
    assert (await socket.receive_json_from())["type"] == "ack"
    # A reconnect's re-join (a new socket) is still served, over both limits.
    other_tab = await joined(alice, since=0)
    for tab in (socket, other_tab):
        await tab.disconnect()


async def test_hello_announces_the_presence_frames_limit(alice, room, set_rate):
    set_rate("presence", 7, window=30)
    socket = await open_socket(alice)
    hello = await socket.receive_json_from()
    assert hello["limits"]["rates"]["presence"] == {"limit": 7, "window": 30}
    await socket.disconnect()


async def test_typing_over_its_limit_is_dropped_without_an_error(alice, room, set_rate):
    set_rate("typing", 2)
    socket = await joined(alice)
    for _ in range(5):
        await socket.send_json_to({"type": "typing", "room": "lobby", "state": "start"})
    assert await socket.receive_nothing()
    await assert_still_serving(socket)
    await socket.disconnect()


async def test_connection_attempts_over_the_limit_are_closed_with_4429(
    alice, room, set_rate
):
    set_rate("connect", 3)
    anonymous = await open_socket(query="")  # failed attempts count too
    await assert_closed_with(anonymous, 4401)
    tabs = [await signed_in(alice) for _ in range(2)]
    refused = await open_socket(alice)
    await assert_closed_with(refused, 4429)
    for tab in tabs:
        await tab.disconnect()


async def test_connection_limits_are_per_client_ip(alice, room, set_rate):
    set_rate("connect", 1)

    async def connect_from(ip):
        ticket = await sync_to_async(ticket_issue)(alice.pk)
        socket = QuietCommunicator(application, f"/ws/chat/?ticket={ticket}")
        socket.scope["client"] = (ip, 40000)
        assert (await socket.connect())[0]
        return socket

    first = await connect_from("192.0.2.1")
    assert (await first.receive_json_from())["type"] == "hello"
    other_ip = await connect_from("192.0.2.2")
    assert (await other_ip.receive_json_from())["type"] == "hello"
    again = await connect_from("192.0.2.1")
    await assert_closed_with(again, 4429)
    for socket in (first, other_ip):
        await socket.disconnect()


# Input hardening


def nested(depth):
    value = 1
    for _ in range(depth - 1):
        value = [value]
    return value


async def test_frames_nested_deeper_than_the_bound_are_invalid(alice, room):
    socket = await signed_in(alice)
    await socket.send_json_to({"type": "ping", "ts": 1, "x": nested(8)})  # frame + 7
    assert (await socket.receive_json_from())["type"] == "pong"
    await socket.send_json_to({"type": "ping", "ts": 1, "x": nested(9)})
    error = await socket.receive_json_from()
    assert (error["code"], error["request"]) == ("invalid", "ping")
    await socket.send_to(text_data="[" * 5000 + "]" * 5000)  # past orjson's own bound
    assert (await socket.receive_json_from())["code"] == "invalid"
    await assert_still_serving(socket)
    await socket.disconnect()


async def test_an_overlong_type_or_client_id_is_not_echoed(alice, room):
    socket = await signed_in(alice)
    await socket.send_json_to({"type": "t" * 5000, "client_id": "c" * 5000})
    error = await socket.receive_json_from()
    assert (error["code"], error["request"], error["ref"]) == ("invalid", None, None)
    assert len(json.dumps(error)) < 200
    await socket.disconnect()


CONTRACT_FRAME_TYPES = {
    "hello",
    "offline_messages",
    "joined",
    "left",
    "ack",
    "pong",
    "message",
    "typing",
    "presence",
    "member_joined",
    "member_left",
    "message_deleted",
    "message_edited",
    "error",
}
ERROR_CODES = {"invalid", "not_found", "forbidden", "rate_limited", "unavailable"}

json_scalars = (
    st.none()
    | st.booleans()
    | st.integers(min_value=-(2**70), max_value=2**70)
    | st.floats(allow_nan=False, allow_infinity=False)
    | st.text(max_size=20)
)
json_values = st.recursive(
    json_scalars,
    lambda inner: (
        st.lists(inner, max_size=3)
        | st.dictionaries(st.text(max_size=5), inner, max_size=3)
    ),
    max_leaves=12,
)
fuzz_frames = st.fixed_dictionaries(
    {
        "type": st.sampled_from(
            ["join", "leave", "message", "typing", "ping", "status", "edit"]
        )
        | json_values
    },
    optional={
        "room": st.sampled_from(["lobby", "side", "nowhere", "No Such!", ""])
        | json_values,
        "body": st.text(max_size=60) | json_values,
        "client_id": st.text(max_size=70) | json_values,
        "since": st.integers(min_value=-3, max_value=40) | json_values,
        "changes_since": st.integers(min_value=-3, max_value=40) | json_values,
        "id": st.integers(min_value=-3, max_value=40) | json_values,
        "ts": json_values,
        "state": st.sampled_from(["start", "stop"]) | json_values,
        "status": st.sampled_from(["online", "away"]) | json_values,
        "extra": json_values,
    },
)
# Mostly well-formed frames, so the fuzz reaches storage and broadcast too.
plausible_frames = st.fixed_dictionaries(
    {
        "type": st.sampled_from(
            ["join", "leave", "message", "typing", "ping", "status", "edit"]
        ),
        "room": st.sampled_from(["lobby", "side"]),
    },
    optional={
        "body": st.text(max_size=60),
        "client_id": st.none() | st.text(max_size=70),
        "since": st.integers(min_value=0, max_value=40),
        "changes_since": st.integers(min_value=0, max_value=40),
        "id": st.integers(min_value=0, max_value=40),
        "ts": st.integers(min_value=0, max_value=2**53) | st.floats(allow_nan=False),
        "state": st.sampled_from(["start", "stop"]),
        "status": st.sampled_from(["online", "away"]),
    },
)
message_frames = st.fixed_dictionaries(
    {
        "type": st.just("message"),
        "room": st.sampled_from(["lobby", "side"]),
        "body": st.text(max_size=60),
        "client_id": st.none() | st.text(max_size=70) | st.sampled_from(["c-1", "c-2"]),
    }
)
fuzz_texts = (
    message_frames.map(json.dumps)
    | plausible_frames.map(json.dumps)
    | fuzz_frames.map(json.dumps)
    | json_values.map(json.dumps)
    | st.text(max_size=40)
)


@hypothesis.settings(
    max_examples=150,
    deadline=None,
    suppress_health_check=[hypothesis.HealthCheck.function_scoped_fixture],
)
@hypothesis.given(texts=st.lists(fuzz_texts, min_size=1, max_size=6))
async def test_random_frames_get_contract_replies_and_store_nothing_malformed(
    alice, room, settings, texts
):
    settings.VOICEFLOW = {**settings.VOICEFLOW, "RATE_LIMIT_MULTIPLIER": 10_000}
    await sync_to_async(Room.objects.get_or_create)(
        slug="side", defaults={"name": "Side"}
    )
    socket = await joined(alice)
    for text in texts:  # send_input: send_to refuses an empty frame
        await socket.send_input({"type": "websocket.receive", "text": text})
    await socket.send_json_to({"type": "ping", "ts": -1})
    while True:
        output = await socket.receive_output(timeout=5)
        assert output["type"] == "websocket.send", (
            f"socket closed: {output} after {texts}"
        )
        reply = json.loads(output["text"])
        assert reply["type"] in CONTRACT_FRAME_TYPES, reply
        hypothesis.event(f"{reply['type']} {reply.get('code', '')}".strip())
        if reply["type"] == "error":
            assert reply["code"] in ERROR_CODES and isinstance(reply["detail"], str)
            assert reply["request"] is None or isinstance(reply["request"], str)
            assert reply["ref"] is None or isinstance(reply["ref"], str)
            if "retry_after" in reply:
                assert isinstance(reply["retry_after"], (int, float))
        if reply == {**reply, "type": "pong", "ts": -1}:
            break
    await socket.disconnect()
    for message in await sync_to_async(list)(Message.objects.all()):
        assert services.clean_body(message.body) == message.body
        assert services.clean_client_id(message.client_id) == message.client_id


# Writing broadcasts without a task per delivery


async def test_a_write_that_need_not_wait_finishes_without_a_task():
    done = []

    async def write():
        done.append(True)

    assert _start_eagerly(write()) is None
    assert done == [True]


async def test_a_write_that_waits_finishes_in_a_task_in_order():
    ready = asyncio.get_running_loop().create_future()
    steps = []

    async def write():
        steps.append("started")
        steps.append(await ready)
        await asyncio.sleep(0)
        return "written"

    task = _start_eagerly(write())
    assert steps == ["started"]
    ready.set_result("resumed")
    assert await task == "written"
    assert steps == ["started", "resumed"]


async def test_a_failed_wait_reaches_the_write():
    ready = asyncio.get_running_loop().create_future()

    async def write():
        await ready

    task = _start_eagerly(write())
    ready.set_exception(ConnectionResetError())
    with pytest.raises(ConnectionResetError):
        await task

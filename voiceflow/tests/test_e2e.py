"""End to end: a real server process and real WebSocket clients."""

import asyncio
import json

import pytest
import websockets
from asgiref.sync import sync_to_async

from chat.models import Message
from chat.tests.sockets import PRESENCE_EVENTS

from .servers import ServerProcess

pytestmark = [pytest.mark.e2e, pytest.mark.django_db(transaction=True)]


async def frame(socket, timeout=5):
    """The next frame that is not a presence, member or typing event."""
    while True:
        data = json.loads(await asyncio.wait_for(socket.recv(), timeout))
        if data.get("type") not in PRESENCE_EVENTS:
            return data


async def open_joined(server, token, room="lobby"):
    socket = await websockets.connect(server.socket_url(token))
    assert (await frame(socket))["type"] == "hello"
    await socket.send(json.dumps({"type": "join", "room": room}))
    assert (await frame(socket))["type"] == "joined"
    return socket


async def test_a_message_reaches_both_users_and_all_their_sockets(server, lobby):
    alice, bob = server.register("alice"), server.register("bob")
    alice_tabs = [await open_joined(server, alice) for _ in range(2)]
    bob_tab = await open_joined(server, bob)

    await bob_tab.send(
        json.dumps(
            {"type": "message", "room": "lobby", "body": "hi all", "client_id": "e1"}
        )
    )
    ack = await frame(bob_tab)
    assert ack["type"] == "ack" and ack["client_id"] == "e1" and ack["seq"] == 1
    for socket in [*alice_tabs, bob_tab]:
        event = await frame(socket)
        assert event["type"] == "message"
        assert (event["id"], event["user"], event["body"]) == (
            ack["id"],
            "bob",
            "hi all",
        )
    # sync_to_async's thread, whose connection the session closes (a pool thread's
    # connection would stay open and block dropping the test database).
    assert await sync_to_async(Message.objects.filter(pk=ack["id"]).exists)()
    for socket in [*alice_tabs, bob_tab]:
        await socket.close()


async def test_contract_close_codes_reach_a_real_client(server, lobby):
    token = server.register("carol")
    async with websockets.connect(server.ws_url) as anonymous:
        with pytest.raises(websockets.ConnectionClosed) as closed:
            await frame(anonymous)
    assert closed.value.rcvd.code == 4401

    async with websockets.connect(
        server.socket_url(token), origin="http://evil.example"
    ) as foreign:
        with pytest.raises(websockets.ConnectionClosed) as closed:
            await frame(foreign)
    assert closed.value.rcvd.code == 4403

    async with websockets.connect(server.socket_url(token), max_size=None) as big:
        await frame(big)  # hello
        await big.send("x" * 70_000)
        with pytest.raises(websockets.ConnectionClosed) as closed:
            await frame(big)
    assert closed.value.rcvd.code == 1009


async def test_sigterm_closes_sockets_with_1012(server, lobby):
    token = server.register("dave")
    socket = await open_joined(server, token)
    server.process.terminate()
    with pytest.raises(websockets.ConnectionClosed) as closed:
        await frame(socket, timeout=10)
    assert closed.value.rcvd.code == 1012
    # uvicorn re-raises the signal after its clean shutdown: "killed by TERM" is clean.
    assert await asyncio.to_thread(server.process.wait, 10) in (0, -15)


def test_tickets_never_reach_the_log(server, lobby):
    token = server.register("erin")
    url = server.socket_url(token)
    ticket = url.split("ticket=")[1]

    async def connect():
        async with websockets.connect(url) as socket:
            await frame(socket)

    asyncio.run(connect())
    # A ticket pasted into any URL's query string: the access log redacts it too.
    status, _ = server.request("GET", f"/health?ticket={ticket}")
    assert status == 200
    server.stop()
    log = server.output()
    assert "socket_connected" in log and "/health?[redacted]" in log
    assert ticket not in log


async def reply_to(socket):
    """The next frame that is not a broadcast message (acks and errors)."""
    while True:
        received = await frame(socket)
        if received["type"] != "message":
            return received


async def test_the_31st_message_is_refused_whichever_process_it_reaches(
    transactional_db, lobby, settings, test_redis_url
):
    # Two processes on one Redis (in the embedded pass too: the limiter is the point).
    env = {"REDIS_URL": test_redis_url, "REDIS_KEY_PREFIX": settings.REDIS_KEY_PREFIX}
    first, second = ServerProcess(**env).start(), ServerProcess(**env).start()
    try:
        token = first.register("alice")
        sockets = [await open_joined(first, token), await open_joined(second, token)]
        for i in range(30):
            if i % 3 == 0:  # REST and socket share the user's window
                status, body = await asyncio.to_thread(
                    second.request,
                    "POST",
                    "/api/rooms/lobby/messages/",
                    {"body": f"rest {i}", "client_id": f"m{i}"},
                    token,
                )
                assert status == 201, body
            else:
                socket = sockets[i % 2]
                await socket.send(
                    json.dumps(
                        {
                            "type": "message",
                            "room": "lobby",
                            "body": f"ws {i}",
                            "client_id": f"m{i}",
                        }
                    )
                )
                assert (await reply_to(socket))["type"] == "ack"
        for socket in sockets:
            await socket.send(
                json.dumps(
                    {
                        "type": "message",
                        "room": "lobby",
                        "body": "31st",
                        "client_id": "m30",
                    }
                )
            )
            refused = await reply_to(socket)
            assert (
                refused["code"] == "rate_limited" and 0 < refused["retry_after"] <= 60
            )
        for server in (first, second):
            status, body = await asyncio.to_thread(
                server.request,
                "POST",
                "/api/rooms/lobby/messages/",
                {"body": "31st"},
                token,
            )
            assert status == 429 and body["code"] == "rate_limited"
        # The suite closes that thread's connection before dropping the database.
        assert await sync_to_async(Message.objects.count)() == 30
        for socket in sockets:
            await socket.close()
    finally:
        first.stop()
        second.stop()


async def test_connection_attempts_over_the_limit_reach_a_client_as_4429(
    transactional_db, lobby, settings
):
    server = ServerProcess(
        VOICEFLOW_RATE_CONNECT="2/60", REDIS_KEY_PREFIX=settings.REDIS_KEY_PREFIX
    ).start()
    try:
        token = server.register("frank")
        for _ in range(2):
            async with websockets.connect(server.socket_url(token)) as socket:
                assert (await frame(socket))["type"] == "hello"
        async with websockets.connect(server.socket_url(token)) as refused:
            with pytest.raises(websockets.ConnectionClosed) as closed:
                await frame(refused)
        assert closed.value.rcvd.code == 4429
    finally:
        server.stop()


async def test_presence_on_a_real_server_reload_then_leave_for_good(lobby):
    grace = 0.6
    server = ServerProcess(VOICEFLOW_OFFLINE_GRACE=str(grace))
    await asyncio.to_thread(server.start)
    try:
        alice, bob = server.register("alice"), server.register("bob")
        watcher = await open_joined(server, bob)
        page = await open_joined(server, alice)
        assert await presence_events(watcher, 0.5) == [
            {"type": "member_joined", "room": "lobby", "user": "alice"}
        ]
        await page.close()  # a reload: back within the grace period, nobody is told
        page = await open_joined(server, alice)
        assert await presence_events(watcher, grace + 0.3) == []
        await page.close()  # gone for good: offline, then member_left
        assert await presence_events(watcher, grace + 2, until=2) == [
            {"type": "presence", "user": "alice", "status": "offline"},
            {"type": "member_left", "room": "lobby", "user": "alice"},
        ]
        await watcher.close()
    finally:
        server.stop()


async def presence_events(socket, seconds, until=None, about="alice"):
    """Presence and member events `about` a user reaching `socket` within `seconds`
    (or until `until` of them arrived)."""
    got, deadline = [], asyncio.get_running_loop().time() + seconds
    while (left := deadline - asyncio.get_running_loop().time()) > 0 and len(
        got
    ) != until:
        try:
            data = json.loads(await asyncio.wait_for(socket.recv(), left))
        except TimeoutError:
            break
        if data.get("type") in PRESENCE_EVENTS - {"typing"} and data["user"] == about:
            got.append(data)
    return got


async def test_sockets_do_not_negotiate_compression_by_default(server, lobby):
    # A browser offers permessage-deflate; accepted, it costs ~40 KB per socket.
    alice = server.register("alice")
    socket = await websockets.connect(server.socket_url(alice), compression="deflate")
    assert (await frame(socket))["type"] == "hello"

    assert socket.response.headers.get("Sec-WebSocket-Extensions") is None
    await socket.close()


def test_a_forged_x_forwarded_for_from_loopback_changes_nothing(transactional_db):
    import urllib.error
    import urllib.request

    forged = {"X-Forwarded-For": "203.0.113.99"}
    server = ServerProcess(VOICEFLOW_RATE_REST="2/60", METRICS_TOKEN="").start()
    try:

        def get(path, headers=None):
            request = urllib.request.Request(server.base + path, headers=headers or {})
            try:
                with urllib.request.urlopen(request, timeout=10) as response:
                    return response.status
            except urllib.error.HTTPError as error:
                return error.code

        # /metrics still sees loopback (a forged public address would be refused).
        assert get("/metrics", forged) == 200
        # The REST limit counts the peer, whatever the header claims.
        assert [get("/api/rooms/", forged), get("/api/rooms/")] == [401, 401]
        assert get("/api/rooms/", {"X-Forwarded-For": "198.51.100.1"}) == 429
        # Static files are served with DEBUG off.
        assert get("/static/chat/room.js") == 200
    finally:
        server.stop()
    assert "203.0.113.99" not in server.output()  # logs name the real peer
    assert "198.51.100.1" not in server.output()

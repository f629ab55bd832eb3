"""Delivery you can trust, against real server processes (the Procfile's web line),
real Redis and the run's real database: several processes, SIGTERM drains, crashes,
a Redis restart, a socket that stops reading."""

import asyncio
import json
import signal
import socket
import time

import pytest
import websockets
from asgiref.sync import sync_to_async

from chat.models import Message, OfflineMark

from .clients import Client, audit, settle, steady_traffic
from .servers import ServerProcess, SweeperProcess
from .test_e2e import frame, open_joined, presence_events

pytestmark = [pytest.mark.e2e, pytest.mark.django_db(transaction=True)]


def start_all(*servers):
    """Start processes side by side (each takes a second or two to boot)."""
    return asyncio.gather(*(asyncio.to_thread(s.start) for s in servers))


@pytest.fixture
def shared_redis(settings, redis_server):
    """The Redis several processes share: the run's (Redis pass) or a private one."""
    return settings.REDIS_URL or redis_server.url


def process_env(settings, redis_url, **env):
    return {
        "REDIS_URL": redis_url,
        "REDIS_KEY_PREFIX": settings.REDIS_KEY_PREFIX,
        "VOICEFLOW_RATE_LIMIT_MULTIPLIER": "1000",
        **{key: str(value) for key, value in env.items()},
    }


def send_message(socket, body, client_id, room="lobby"):
    return socket.send(
        json.dumps(
            {"type": "message", "room": room, "body": body, "client_id": client_id}
        )
    )


async def test_a_message_sent_on_one_process_reaches_sockets_on_the_other(
    lobby, settings, shared_redis
):
    env = process_env(settings, shared_redis)
    first, second = ServerProcess(**env), ServerProcess(**env)
    await start_all(first, second)
    try:
        alice, bob = first.register("alice"), first.register("bob")
        on_first = await open_joined(first, alice)
        on_second = await open_joined(second, bob)
        await send_message(on_second, "across processes", "x-1")
        ack = await frame(on_second)
        assert ack["type"] == "ack"
        for socket in (on_first, on_second):
            got = await frame(socket)
            assert (got["type"], got["id"], got["body"]) == (
                "message",
                ack["id"],
                "across processes",
            )
        await on_first.close()
        await on_second.close()
    finally:
        first.stop()
        second.stop()


async def member_events(socket, seconds):
    """Every presence and member event reaching `socket` within `seconds`."""
    got, deadline = [], time.monotonic() + seconds
    while (left := deadline - time.monotonic()) > 0:
        try:
            data = json.loads(await asyncio.wait_for(socket.recv(), left))
        except TimeoutError:
            break
        if data["type"] in ("presence", "member_joined", "member_left"):
            got.append(data)
    return got


async def closed_code(socket, timeout=10):
    """Read until the server closes the socket: (close code, frames before it)."""
    frames = []
    try:
        while True:
            frames.append(json.loads(await asyncio.wait_for(socket.recv(), timeout)))
    except websockets.ConnectionClosed as closed:
        return closed.rcvd.code if closed.rcvd else None, frames


async def test_sigterm_drains_acks_in_flight_and_keeps_presence_through_a_reconnect(
    lobby, settings, shared_redis
):
    grace, window, drain_timeout = 3.0, 1.0, 6.0
    env = process_env(
        settings,
        shared_redis,
        VOICEFLOW_OFFLINE_GRACE=grace,
        VOICEFLOW_DRAIN_WINDOW=window,
        VOICEFLOW_DRAIN_TIMEOUT=drain_timeout,
    )
    leaving, staying = ServerProcess(**env), ServerProcess(**env)
    await start_all(leaving, staying)
    sweeper = SweeperProcess(staying, interval=0.2).start()
    try:
        names = ("alice", "carol", "bob", "dave")
        alice, carol, bob, dave = (staying.register(name) for name in names)
        watcher = await open_joined(staying, bob)
        alice_socket = await open_joined(leaving, alice)
        carol_socket = await open_joined(leaving, carol)
        tabs = []  # dave's: in no room, there to show the closes are spread out
        for _ in range(10):
            tabs.append(await websockets.connect(leaving.socket_url(dave)))
            assert (await frame(tabs[-1]))["type"] == "hello"
        await presence_events(watcher, 0.5)  # their member_joined

        await send_message(alice_socket, "sent as the deploy starts", "in-flight")
        leaving.process.send_signal(signal.SIGTERM)
        stopped_at = time.monotonic()

        async def closed_at(socket):
            code, _ = await closed_code(socket)
            return code, time.monotonic()

        closes = await asyncio.gather(*map(closed_at, tabs))
        assert {code for code, _ in closes} == {1012}
        moments = [at for _, at in closes]
        assert max(moments) - min(moments) > window * 0.3  # not all at once
        assert max(moments) - stopped_at < window + 1

        code, before_close = await closed_code(alice_socket)
        assert code == 1012
        ack = next(f for f in before_close if f["type"] == "ack")
        assert ack["client_id"] == "in-flight"
        assert await sync_to_async(Message.objects.filter(pk=ack["id"]).exists)()
        assert (await closed_code(carol_socket))[0] == 1012

        # alice reconnects to the other process within the grace period; carol never.
        alice_socket = await websockets.connect(staying.socket_url(alice))
        assert (await frame(alice_socket))["type"] == "hello"
        await alice_socket.send(
            json.dumps({"type": "join", "room": "lobby", "since": 0})
        )
        joined = await frame(alice_socket)
        assert [m["id"] for m in joined["missed"]] == [ack["id"]]

        exit_code = await asyncio.to_thread(leaving.process.wait, drain_timeout + 5)
        assert exit_code in (0, -signal.SIGTERM)
        assert time.monotonic() - stopped_at < drain_timeout + 1

        events = await member_events(
            watcher, grace + 1.5 - (time.monotonic() - stopped_at)
        )
        assert events == [
            {"type": "presence", "user": "carol", "status": "offline"},
            {"type": "member_left", "room": "lobby", "user": "carol"},
        ]
        # The sweeper declared carol offline in its own process: her queue has begun.
        assert await sync_to_async(
            OfflineMark.objects.filter(user__username="carol").exists
        )()
        assert not await sync_to_async(
            OfflineMark.objects.filter(user__username="alice").exists
        )()
        # What bob posts now waits for carol, and reaches her on her next connect.
        await send_message(watcher, "while you were away", "away-1")
        posted = await frame(watcher)
        assert posted["type"] == "ack"
        carol_socket = await websockets.connect(staying.socket_url(carol))
        assert (await frame(carol_socket))["type"] == "hello"
        queue = await frame(carol_socket)
        assert queue["type"] == "offline_messages"
        assert [m["id"] for m in queue["messages"]] == [posted["id"]]
        await carol_socket.close()
        await alice_socket.close()
        await watcher.close()
    finally:
        sweeper.stop()
        leaving.stop()
        staying.stop()


def stored_messages(slug="lobby"):
    return [
        {"id": m.id, "client_id": m.client_id, "user": m.user.username, "body": m.body}
        for m in Message.objects.filter(room__slug=slug).select_related("user")
    ]


async def test_kill_9_of_one_process_under_steady_traffic_loses_nothing_acked(
    lobby, settings, shared_redis
):
    env = process_env(settings, shared_redis)
    doomed, survivor = ServerProcess(**env), ServerProcess(**env)
    await start_all(doomed, survivor)
    try:
        names = ["ann", "ben", "cat", "dan"]
        tokens = [survivor.register(name) for name in names]
        clients = [
            Client(
                name, token, [doomed.base, survivor.base] if i < 2 else [survivor.base]
            )
            for i, (name, token) in enumerate(zip(names, tokens))
        ]
        runs = [asyncio.ensure_future(c.run()) for c in clients]
        assert await settle(clients, timeout=10)
        traffic = asyncio.ensure_future(steady_traffic(clients, seconds=3))
        await asyncio.sleep(1)
        doomed.stop(signal.SIGKILL)
        await traffic
        assert await settle(clients, timeout=20)
        stored = await sync_to_async(stored_messages)()
        report = audit(clients, stored)
        for client in clients:
            client.stop()
        await asyncio.gather(*runs)

        assert report["sent"] >= 4 * 50 and report["unacked"] == 0
        assert report["lost_acked"] == 0  # every ack is in the database
        assert report["stored"] == report["acked"]  # each message stored once
        assert report["duplicated"] == 0
        assert report["lost_deliveries"] == 0  # everyone holds everything, no gap
        assert [c.connects for c in clients[2:]] == [1, 1]  # the survivors' sockets
        assert all(c.connects >= 2 for c in clients[:2])  # moved to the survivor
    finally:
        doomed.stop()
        survivor.stop()


async def test_a_redis_restart_under_steady_traffic_loses_and_duplicates_nothing(
    lobby, settings, redis_server
):
    # No presence touch in the test's time: live delivery afterwards shows the
    # pub/sub layer itself reconnected, whatever presence does.
    env = process_env(settings, redis_server.url, VOICEFLOW_PRESENCE_TOUCH_INTERVAL=60)
    first, second = ServerProcess(**env), ServerProcess(**env)
    await start_all(first, second)
    try:
        names = ["ann", "ben", "cat", "dan"]
        tokens = [first.register(name) for name in names]
        clients = [
            Client(
                name, token, [(first, second)[i % 2].base, (second, first)[i % 2].base]
            )
            for i, (name, token) in enumerate(zip(names, tokens))
        ]
        runs = [asyncio.ensure_future(c.run()) for c in clients]
        assert await settle(clients, timeout=10)
        traffic = asyncio.ensure_future(steady_traffic(clients, seconds=4))
        await asyncio.sleep(1)
        redis_server.kill()
        await asyncio.sleep(0.3)
        status, health = await asyncio.to_thread(first.request, "GET", "/health")
        assert (status, health["services"]["redis"]) == (503, False)
        await asyncio.to_thread(redis_server.start)  # empty: every key is gone
        back_at = time.monotonic()
        await traffic
        assert await settle(clients, timeout=20)
        recovered_in = time.monotonic() - back_at
        for server in (first, second):
            status, _ = await asyncio.to_thread(server.request, "GET", "/health")
            assert status == 200
        stored = await sync_to_async(stored_messages)()
        report = audit(clients, stored)

        # Live delivery works again across processes (the pub/sub layer reconnected).
        later = [clients[0].send("after the restart"), clients[1].send("and again")]
        assert await settle(clients, timeout=5)
        ids = {c.acked[cid]["id"] for c, cid in zip(clients, later)}
        await asyncio.sleep(0.2)
        assert all(ids <= c.live for c in clients), [c.close_codes for c in clients]
        for client in clients:
            client.stop()
        await asyncio.gather(*runs)

        assert report["unacked"] == 0 and report["acked"] > 0
        assert report["lost_acked"] == 0
        assert report["stored"] == report["acked"]
        assert report["duplicated"] == 0
        assert report["lost_deliveries"] == 0
        assert recovered_in < 10, recovered_in
    finally:
        first.stop()
        second.stop()


async def reader(server, token):
    """A joined socket that reads (and answers pings) however far its test lags."""
    socket = await websockets.connect(server.socket_url(token), max_queue=None)
    assert (await frame(socket))["type"] == "hello"
    await socket.send(json.dumps({"type": "join", "room": "lobby"}))
    assert (await frame(socket))["type"] == "joined"
    return socket


class StuckSocket:
    """A WebSocket client by hand that joins the lobby, then stops reading."""

    def __init__(self, server, token):
        self.server, self.token = server, token

    def open(self):
        url = self.server.socket_url(self.token)
        self.sock = socket.socket()
        self.sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
        self.sock.connect(("127.0.0.1", self.server.port))
        path = url.split(str(self.server.port), 1)[1]
        self.sock.sendall(
            f"GET {path} HTTP/1.1\r\nHost: 127.0.0.1\r\nUpgrade: websocket\r\n"
            "Connection: Upgrade\r\nSec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\n"
            "Sec-WebSocket-Version: 13\r\n\r\n".encode()
        )
        response = b""
        while b"\r\n\r\n" not in response:
            response += self.sock.recv(1)  # byte by byte: leave the frames unread
        assert b" 101 " in response.split(b"\r\n")[0], response
        payload = json.dumps({"type": "join", "room": "lobby"}).encode()
        mask = b"\x01\x02\x03\x04"
        masked = bytes(b ^ mask[i % 4] for i, b in enumerate(payload))
        self.sock.sendall(bytes([0x81, 0x80 | len(payload)]) + mask + masked)

    def read_to_end(self, timeout=20):
        """Every text frame the server sent, until it ends the connection."""
        self.sock.settimeout(timeout)
        data = b""
        while chunk := self.sock.recv(1 << 16):
            data += chunk
        self.sock.close()
        return [
            json.loads(payload) for opcode, payload in ws_frames(data) if opcode == 1
        ]

    def read_to_close(self, timeout=20):
        """(opcode, payload) of every frame the server sent up to its close frame,
        and when that came (time.monotonic)."""
        self.sock.settimeout(timeout)
        data = b""
        while chunk := self.sock.recv(1 << 16):
            data += chunk
            frames = ws_frames(data)
            if frames and frames[-1][0] == 8:
                closed_at = time.monotonic()
                self.sock.close()
                return frames, closed_at
        raise AssertionError(f"the connection ended without a close frame: {data!r}")


def ws_frames(data):
    """(opcode, payload) of the complete unmasked frames at the start of `data`."""
    frames, at = [], 0
    while at + 2 <= len(data):
        opcode, size, start = data[at] & 0x0F, data[at + 1] & 0x7F, at + 2
        if size == 126:
            size, start = int.from_bytes(data[start : start + 2], "big"), start + 2
        elif size == 127:
            size, start = int.from_bytes(data[start : start + 8], "big"), start + 8
        if start + size > len(data):
            break
        frames.append((opcode, data[start : start + size]))
        at = start + size
    return frames


async def test_a_client_gone_silent_is_closed_with_4408_at_the_dead_timeout(lobby):
    # A client whose network went: it sends nothing more and answers nothing. The
    # server's silence timeout finds it, without WebSocket pings (off by default).
    dead_after = 1.5
    server = ServerProcess(VOICEFLOW_DEAD_AFTER=str(dead_after))
    await asyncio.to_thread(server.start)
    try:
        gone = StuckSocket(server, server.register("gone"))
        await asyncio.to_thread(gone.open)  # its last frame: the join
        last_frame = time.monotonic()
        frames, closed_at = await asyncio.to_thread(gone.read_to_close)
    finally:
        server.stop()
    assert [opcode for opcode, _ in frames if opcode != 1] == [8]  # no ping came
    assert int.from_bytes(frames[-1][1][:2], "big") == 4408
    assert dead_after - 0.05 <= closed_at - last_frame < dead_after + 1.5


async def test_a_socket_that_stops_reading_neither_stalls_the_room_nor_loses_silently(
    lobby, settings
):
    server = ServerProcess(
        REDIS_KEY_PREFIX=settings.REDIS_KEY_PREFIX,
        VOICEFLOW_RATE_LIMIT_MULTIPLIER="1000",
        VOICEFLOW_WS_PING_INTERVAL="2",
        VOICEFLOW_WS_PING_TIMEOUT="10",
    )
    await asyncio.to_thread(server.start)
    try:
        alice, bob, carol = (server.register(n) for n in ("alice", "bob", "carol"))
        # alice's tab stops reading: a bare TCP socket with a tiny receive buffer.
        stuck = StuckSocket(server, alice)
        await asyncio.to_thread(stuck.open)
        sender, watcher = [await reader(server, token) for token in (bob, carol)]

        count, body = 1500, "x" * 4000  # far more than every buffer on the way holds
        started = time.monotonic()

        async def read_messages(socket):
            ids = set()
            while len(ids) < count:
                got = await frame(socket, timeout=20)
                if got["type"] == "message":
                    ids.add(got["id"])
            return ids

        readers = [asyncio.ensure_future(read_messages(s)) for s in (sender, watcher)]
        for i in range(count):
            await send_message(sender, body, f"bulk-{i}")
            await asyncio.sleep(0)  # let the readers (and their ping answers) run
        seen_by_bob, seen_by_carol = await asyncio.gather(*readers)
        assert seen_by_bob == seen_by_carol and len(seen_by_carol) == count
        assert time.monotonic() - started < 60  # the room kept flowing

        # alice reads again: what was buffered, then the end of a dropped socket.
        held = await asyncio.to_thread(stuck.read_to_end)
        seqs = {f["seq"] for f in held if f["type"] == "message"}
        # (The server closed her socket: 1013 past VOICEFLOW_SOCKET_HARD_BYTES unread,
        # or 1011 when the kernel's buffers took that much and her pong never came.)
        # ...and recovers the rest by seq, as any reconnecting client does.
        since = max(s for s in range(len(seqs) + 1) if set(range(1, s + 1)) <= seqs)
        back = await websockets.connect(server.socket_url(alice))
        assert (await frame(back))["type"] == "hello"
        recovered = set(seqs)
        while True:
            await back.send(
                json.dumps({"type": "join", "room": "lobby", "since": since})
            )
            # Her socket went long ago: offline_messages may come first.
            while (joined := await frame(back))["type"] != "joined":
                pass
            recovered |= {m["seq"] for m in joined["missed"]}
            since = max([since] + [m["seq"] for m in joined["missed"]])
            if not joined["truncated"]:
                break
        assert recovered == set(range(1, count + 1))
        for s in (back, sender, watcher):
            await s.close()
    finally:
        server.stop()


async def test_after_redis_restarts_empty_live_sockets_stay_open_present_and_served(
    lobby, settings, redis_server
):
    env = process_env(settings, redis_server.url, VOICEFLOW_PRESENCE_TOUCH_INTERVAL=1)
    server = ServerProcess(**env)
    await start_all(server)
    try:
        alice, bob = server.register("alice"), server.register("bob")
        sockets = [await open_joined(server, alice), await open_joined(server, bob)]

        def listed():
            status, body = server.request(
                "GET", "/api/rooms/lobby/presence/", token=alice
            )
            assert status == 200, body
            return sorted(user["username"] for user in body["users"])

        assert await asyncio.to_thread(listed) == ["alice", "bob"]
        await asyncio.to_thread(redis_server.restart)  # empty: every key is gone
        deadline = time.monotonic() + 10
        while await asyncio.to_thread(listed) != ["alice", "bob"]:
            assert time.monotonic() < deadline, "the live sockets were not re-listed"
            await asyncio.sleep(0.2)
        # Clients keep pinging: answered, never closed (a 4408 would be a reconnect).
        for at in range(3):
            for socket in sockets:
                await socket.send(json.dumps({"type": "ping", "ts": at}))
                assert (await frame(socket))["type"] == "pong"
            await asyncio.sleep(0.6)  # past the touch interval: the store is asked
        assert await asyncio.to_thread(listed) == ["alice", "bob"]
        status, posted = await asyncio.to_thread(
            server.request,
            "POST",
            "/api/rooms/lobby/messages/",
            {"body": "after the restart"},
            bob,
        )
        assert status == 201, posted
        for socket in sockets:
            got = await frame(socket)
            assert (got["type"], got["id"]) == ("message", posted["id"])
        for socket in sockets:
            await socket.close()
    finally:
        server.stop()

"""GET /health: the contract's shape, and "degraded" fast when a service is down;
GET /health/live and /health/ready, the load balancer's probes."""

import asyncio
import http.client
import json
import signal
import socket
import time
import urllib.error
import urllib.request

import pytest
import redis
import websockets
from django.conf import settings
from django.test import AsyncClient

from chat import sockets
from chat.tests.test_consumers import joined, signed_in

from .servers import ServerProcess, free_port

pytestmark = pytest.mark.django_db(transaction=True)


def get_health(server, timeout=10, path="/health"):
    """(status, body, seconds taken) of GET /health (or `path`) on a server process."""
    started = time.monotonic()
    try:
        with urllib.request.urlopen(server.base + path, timeout=timeout) as response:
            status, raw = response.status, response.read()
    except urllib.error.HTTPError as error:
        status, raw = error.code, error.read()
    return status, json.loads(raw), time.monotonic() - started


@pytest.fixture
def servers():
    started = []

    def start(**env):
        server = ServerProcess(VOICEFLOW_HEALTH_TIMEOUT="0.5", **env).start()
        started.append(server)
        return server

    yield start
    for server in started:
        server.stop(signal.SIGKILL)


async def test_health_reports_the_contract_shape_and_this_process_s_sockets(
    alice, bob, lobby
):
    # Sockets that earlier tests left to the garbage collector may still be counted.
    before = sockets.counts()
    tabs = [await joined(alice), await joined(alice), await signed_in(bob)]
    response = await AsyncClient().get("/health")
    assert response.status_code == 200
    body = response.json()
    assert body == {
        "status": "ok",
        "services": {"redis": True if settings.REDIS_URL else None, "database": True},
        "metrics": {
            "presence": {
                "totalUsers": 2,
                "onlineUsers": 2,
                "awayUsers": 0,
                "offlineUsers": 0,
                "totalRooms": 1,
                "activeRooms": 1,
            },
            "sockets": {
                "connections": before["connections"] + 3,
                "users": before["users"] + 2,
                "rooms": max(before["rooms"], 1),
                "typingDebounces": 0,
                "memoryUsage": {
                    "rss": body["metrics"]["sockets"]["memoryUsage"]["rss"]
                },
                "outputBytes": 0,  # every client read all it was sent
                "structures": body["metrics"]["sockets"]["structures"],
            },
        },
    }
    assert body["metrics"]["sockets"]["memoryUsage"]["rss"] > 10_000_000
    structures = body["metrics"]["sockets"]["structures"]
    assert structures["hubSockets"] >= 3 and structures["hubRooms"] >= 1
    assert all(isinstance(size, int) for size in structures.values())
    for tab in tabs:
        await tab.disconnect()
    after = (await AsyncClient().get("/health")).json()["metrics"]["sockets"]
    assert {k: after[k] for k in before} == before


def test_health_is_503_quickly_when_redis_hangs_and_when_it_is_gone(
    transactional_db, redis_server, servers
):
    server = servers(REDIS_URL=redis_server.url)
    status, body, _ = get_health(server)
    assert (status, body["status"], body["services"]) == (
        200,
        "ok",
        {"redis": True, "database": True},
    )

    redis_server.process.send_signal(signal.SIGSTOP)  # hung: accepts, never answers
    for _ in range(2):
        status, body, took = get_health(server)
        assert (status, body["status"], body["services"]) == (
            503,
            "degraded",
            {"redis": False, "database": True},
        )
        assert took < 2
        # Every process shares the Redis: the balancer keeps them all.
        assert get_health(server, path="/health/ready")[:2] == (
            200,
            {"status": "ready"},
        )
    assert set(body["metrics"]) == {"presence", "sockets"}

    redis_server.kill()  # gone: connections refused
    status, body, took = get_health(server)
    assert (status, body["services"]["redis"], took < 2) == (503, False, True)
    assert get_health(server, path="/health/ready")[0] == 200


def test_health_is_503_when_the_database_refuses_connections(transactional_db, servers):
    closed_port = free_port()
    server = servers(
        DATABASE_URL=f"postgres://postgres@127.0.0.1:{closed_port}/nothing"
    )
    status, body, took = get_health(server)
    assert (status, body["status"], body["services"]["database"]) == (
        503,
        "degraded",
        False,
    )
    assert body["services"]["redis"] is (True if settings.REDIS_URL else None)
    assert took < 2
    status, body, took = get_health(server, path="/health/ready")
    assert (status, body, took < 2) == (
        503,
        {"status": "unready", "reason": "database"},
        True,
    )
    assert get_health(server, path="/health/live")[:2] == (200, {"status": "live"})


def test_health_is_503_quickly_when_the_database_hangs(transactional_db, servers):
    # A listener that never answers: the connection opens, the handshake never ends.
    with socket.socket() as silent:
        silent.bind(("127.0.0.1", 0))
        silent.listen(16)
        port = silent.getsockname()[1]
        server = servers(DATABASE_URL=f"postgres://postgres@127.0.0.1:{port}/hung")
        for _ in range(3):  # the hung check is awaited again, not piled up
            status, body, took = get_health(server)
            assert (status, body["services"]["database"]) == (503, False)
            assert took < 2
            status, body, took = get_health(server, path="/health/ready")
            assert (status, body["reason"], took < 2) == (503, "database", True)


def test_a_socket_closed_while_a_frame_is_sent_to_it_is_not_counted_any_more(
    lobby, servers
):
    server = servers()
    token = server.register("alice")

    async def post_and_leave_at_once():
        for i in range(5):
            async with websockets.connect(server.socket_url(token)) as socket:
                await socket.recv()  # hello
                await socket.send(json.dumps({"type": "join", "room": "lobby"}))
                await socket.recv()
                await socket.send(
                    json.dumps({"type": "message", "room": "lobby", "body": f"m{i}"})
                )
                await socket.recv()  # ack; the broadcast is on its way as we close

    asyncio.run(post_and_leave_at_once())
    deadline = time.monotonic() + 5
    while time.monotonic() < deadline:
        sockets = get_health(server)[1]["metrics"]["sockets"]
        if sockets["connections"] == 0:
            break
        time.sleep(0.1)
    assert (sockets["connections"], sockets["users"], sockets["rooms"]) == (0, 0, 0)


class Monitor:
    """Redis MONITOR on a raw connection: the commands a server ran (scripts' too)."""

    def __init__(self, port):
        self.conn = socket.create_connection(("127.0.0.1", port), timeout=5)
        self.conn.sendall(b"MONITOR\r\n")
        assert self.conn.recv(5) == b"+OK\r\n"

    def commands(self, quiet=0.3):
        """Every command seen until nothing arrives for `quiet` seconds."""
        self.conn.settimeout(quiet)
        data = b""
        try:
            while chunk := self.conn.recv(65536):
                data += chunk
        except TimeoutError:
            pass
        self.conn.close()
        return [line.split('"')[1].upper() for line in data.decode().splitlines()]


async def test_health_counts_presence_without_scanning_the_keyspace(
    settings, redis_server, alice, bob, make_user, lobby, presence_conf
):
    from presence.services import (
        presence_connect,
        presence_disconnect,
        presence_room_enter,
        presence_set_away,
    )

    settings.REDIS_URL = redis_server.url  # the presence store on a private Redis
    presence_conf(PRESENCE_EVENT_INTERVAL=0)  # bob's away right after his online
    carol = await asyncio.to_thread(make_user, "carol")
    for sid, user in (("a", alice), ("b", bob), ("c", carol)):
        ids = {"user_id": user.pk, "username": user.username}
        await presence_connect(sid=sid, **ids)
        await presence_room_enter(sid=sid, slug="lobby", **ids)
    await presence_set_away(sid="b", away=True)
    await presence_disconnect(sid="c")  # in the grace: still online, still present
    filler = redis.Redis.from_url(redis_server.url)
    filler.mset({f"unrelated:{i}": 1 for i in range(2000)})
    filler.close()

    monitor = Monitor(redis_server.port)
    response = await AsyncClient().get("/health")
    seen = await asyncio.to_thread(monitor.commands)
    assert response.status_code == 200
    assert response.json()["metrics"]["presence"] == {
        "totalUsers": 3,
        "onlineUsers": 2,
        "awayUsers": 1,
        "offlineUsers": 0,
        "totalRooms": 1,
        "activeRooms": 1,
    }
    assert "EVALSHA" in seen or "EVAL" in seen  # the totals were read from this Redis
    assert not {"SCAN", "KEYS", "TYPE"} & set(seen), seen
    assert len(seen) < 20, seen


async def asgi_get(path, method="GET", host=b"10.9.8.7:8101"):
    """(status, body: parsed if JSON) of a request to voiceflow.asgi.application."""
    from voiceflow.asgi import application

    sent = []
    scope = {
        "type": "http",
        "asgi": {"version": "3.0"},
        "http_version": "1.1",
        "method": method,
        "scheme": "http",
        "path": path,
        "raw_path": path.encode(),
        "query_string": b"",
        "headers": [(b"host", host)],  # not in ALLOWED_HOSTS: a balancer by address
        "client": ("127.0.0.1", 40000),
        "server": ("10.9.8.7", 8101),
    }

    requests = [{"type": "http.request", "body": b"", "more_body": False}]

    async def receive():
        if requests:
            return requests.pop()
        await asyncio.Event().wait()  # no disconnect until the response is sent

    async def send(message):
        sent.append(message)

    await application(scope, receive, send)
    body = b"".join(m.get("body", b"") for m in sent[1:])
    return sent[0]["status"], json.loads(body) if body.startswith(b"{") else body


async def test_the_probes_answer_a_balancer_by_address(monkeypatch):
    from voiceflow import health

    monkeypatch.setattr(health, "_draining", False)
    assert await asgi_get("/health/live") == (200, {"status": "live"})
    assert await asgi_get("/health/ready") == (200, {"status": "ready"})
    assert (await asgi_get("/health/ready", method="POST"))[0] == 405
    assert (await asgi_get("/health"))[0] == 400  # Django's: the host is checked

    health.draining_start()
    assert await asgi_get("/health/ready") == (
        503,
        {"status": "unready", "reason": "draining"},
    )
    assert await asgi_get("/health/live") == (200, {"status": "live"})


def test_ready_is_503_while_a_real_server_drains(lobby, servers):
    server = servers(VOICEFLOW_DRAIN_WINDOW="3", VOICEFLOW_DRAIN_TIMEOUT="6")
    token = server.register("alice")
    probe = http.client.HTTPConnection("127.0.0.1", server.port, timeout=5)

    def ready():
        probe.request("GET", "/health/ready")
        response = probe.getresponse()
        return response.status, json.loads(response.read())

    async def drained_while_connected():
        # A socket open keeps the drain going for up to the window.
        async with websockets.connect(server.socket_url(token)) as socket:
            await socket.recv()  # hello
            assert await asyncio.to_thread(ready) == (200, {"status": "ready"})
            server.process.send_signal(signal.SIGTERM)
            deadline = time.monotonic() + 3
            while (answer := await asyncio.to_thread(ready))[0] == 200:
                assert time.monotonic() < deadline, "still ready while draining"
                await asyncio.sleep(0.05)
            return answer

    answer = asyncio.run(drained_while_connected())
    assert answer == (503, {"status": "unready", "reason": "draining"})
    probe.close()

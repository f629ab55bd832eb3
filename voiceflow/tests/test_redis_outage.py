"""Redis gone under steady traffic, against real server processes on PostgreSQL: posting
goes on (stored, acked, delivered on the same process), presence and typing pause,
and everything comes back by itself once Redis does; a logged-in page works
meanwhile. VOICEFLOW_TEST_REDIS_OUTAGE sets the outage's length in seconds (CI: 4)."""

import asyncio
import http.cookiejar
import json
import os
import time
import urllib.error
import urllib.parse
import urllib.request

import pytest
import redis
import websockets
from asgiref.sync import sync_to_async
from django.contrib.sessions.models import Session
from django.db import connection

from .clients import Client, audit, settle, steady_traffic
from .servers import ServerProcess, SweeperProcess
from .test_delivery import process_env, start_all, stored_messages

pytestmark = [
    pytest.mark.e2e,
    pytest.mark.django_db(transaction=True),
    pytest.mark.skipif(
        connection.vendor != "postgresql", reason="the shared deployment: PostgreSQL"
    ),
]

OUTAGE = float(os.environ.get("VOICEFLOW_TEST_REDIS_OUTAGE") or 4)


class WatchfulClient(Client):
    """A contract client that also pings, fills a gap a pong's `last_seq` shows,
    and notes when each ack and live message came, and every error frame."""

    def __init__(self, *args, ping_every=0.5, **kwargs):
        super().__init__(*args, **kwargs)
        self.ping_every = ping_every
        self.ack_times = []  # loop time of every ack, in order
        self.live_at = {}  # message id -> loop time it came live
        self.errors = []
        self.stored_last = 0  # the highest last_seq a pong told of

    async def _serve(self, socket):
        pinger = asyncio.ensure_future(self._ping(socket))
        try:
            await super()._serve(socket)
        finally:
            pinger.cancel()

    async def _ping(self, socket):
        while True:
            await asyncio.sleep(self.ping_every)
            try:
                await socket.send(json.dumps({"type": "ping", "ts": time.time()}))
            except websockets.ConnectionClosed:
                return

    async def _handle(self, socket, data):
        kind = data.get("type")
        now = asyncio.get_running_loop().time()
        if kind == "ack" and data["client_id"] not in self.acked:
            self.ack_times.append(now)
        elif kind == "message":
            self.live_at.setdefault(data["id"], now)
        elif kind == "error":
            self.errors.append(data)
        elif kind == "pong":
            self.stored_last = max(
                self.stored_last, data.get("last_seq", {}).get(self.room, 0)
            )
            if self.stored_last > self.last_seq:
                asyncio.ensure_future(self._fill(socket, self.stored_last))
        await super()._handle(socket, data)

    async def _fill(self, socket, seq):
        # As the browser does: messages stored just before the read may be coming.
        await asyncio.sleep(0.5)
        if self.last_seq < seq and socket is self._socket:
            await self._rejoin(socket)

    async def typing(self):
        if self._socket is not None:
            frame = {"type": "typing", "room": self.room, "state": "start"}
            await self._socket.send(json.dumps(frame))


def max_gap(times, start, end):
    """The longest time without an ack between `start` and `end`."""
    inside = [start] + [t for t in times if start <= t <= end] + [end]
    return max(b - a for a, b in zip(inside, inside[1:]))


def presence_listed(server, token):
    """(status, usernames listed in the lobby), or the error body."""
    status, body = server.request("GET", "/api/rooms/lobby/presence/", token=token)
    if status != 200:
        return status, body
    return status, sorted(user["username"] for user in body["users"])


async def listed_by(server, token, names, deadline):
    """When the lobby's presence lists exactly `names` (loop time)."""
    loop = asyncio.get_running_loop()
    while await asyncio.to_thread(presence_listed, server, token) != (200, names):
        assert loop.time() < deadline, "the live sockets were not listed again"
        await asyncio.sleep(0.1)
    return loop.time()


async def test_posting_goes_on_through_a_redis_outage_and_all_resumes_after(
    lobby, settings, redis_server
):
    env = process_env(
        settings,
        redis_server.url,
        VOICEFLOW_PRESENCE_TOUCH_INTERVAL=1,
        VOICEFLOW_HEALTH_TIMEOUT=0.5,
    )
    first, second = ServerProcess(**env), ServerProcess(**env)
    await start_all(first, second)
    sweeper = SweeperProcess(first, interval=0.5).start()
    servers = (first, second)
    names = ["ann", "ben", "cat", "dan"]
    tokens = {name: first.register(name) for name in [*names, "eve"]}
    # Each client on one process only: what reaches it live during the outage came
    # from its own process.
    clients = [
        WatchfulClient(name, tokens[name], [servers[i % 2].base])
        for i, name in enumerate(names)
    ]
    late = WatchfulClient("eve", tokens["eve"], [first.base])  # joins during it
    runs = [asyncio.ensure_future(c.run()) for c in clients]
    loop = asyncio.get_running_loop()
    try:
        assert await settle(clients, timeout=10)
        listed = await asyncio.to_thread(presence_listed, first, tokens["ann"])
        assert listed == (200, names)

        traffic = asyncio.ensure_future(
            steady_traffic(clients, seconds=2 + OUTAGE + 4, interval=0.1)
        )
        await asyncio.sleep(2)
        redis_server.kill()
        down_at = loop.time()
        await asyncio.sleep(0.5)
        for server in servers:
            status, health = await asyncio.to_thread(server.request, "GET", "/health")
            assert (status, health["services"]["redis"]) == (503, False)
            ready = await asyncio.to_thread(server.request, "GET", "/health/ready")
            assert ready == (200, {"status": "ready"})
        # The REST API posts too; presence, known only to Redis, is unavailable.
        status, posted = await asyncio.to_thread(
            first.request,
            "POST",
            "/api/rooms/lobby/messages/",
            {"body": "posted over REST while Redis is down"},
            tokens["ann"],
        )
        assert status == 201, posted
        assert (await asyncio.to_thread(presence_listed, first, tokens["ann"]))[
            0
        ] == 503
        status, rooms = await asyncio.to_thread(
            first.request, "GET", "/api/rooms/", token=tokens["ann"]
        )
        assert status == 200 and rooms["count"] >= 1
        # Typing pauses without an error; a new connection is served.
        for client in clients:
            await client.typing()
        runs.append(asyncio.ensure_future(late.run()))
        await asyncio.sleep(max(0.0, OUTAGE - (loop.time() - down_at)))

        restarting_at = loop.time()
        await asyncio.to_thread(redis_server.start)  # empty: every key is gone
        back_at = loop.time()
        assert late.connects == 1 and late.connected, late.close_codes
        listed_again = asyncio.ensure_future(
            listed_by(first, tokens["ann"], [*names, "eve"], back_at + 10)
        )
        await traffic
        everyone = [*clients, late]
        assert await settle(everyone, timeout=20)
        stored = await sync_to_async(stored_messages)()
        report = audit(everyone, stored)

        # Presence: the live sockets are registered again, without a reconnect.
        presence_back = await listed_again - back_at
        for server in servers:
            status, _ = await asyncio.to_thread(server.request, "GET", "/health")
            assert status == 200
        assert sweeper.process.poll() is None, "the sweeper died with Redis"

        for client in everyone:
            client.stop()
        await asyncio.gather(*runs)

        acked_at = {
            c.acked[cid]["id"]: t
            for c in clients
            for cid, t in zip(c.acked, c.ack_times)
        }
        # Same-process delivery during the outage: live, to every socket on the
        # sender's process (clients[i] is on servers[i % 2]).
        for i, sender in enumerate(clients):
            during = [
                ack["id"]
                for ack in sender.acked.values()
                if down_at + 0.5 <= acked_at[ack["id"]] <= restarting_at
            ]
            assert during
            for peer in clients[i % 2 :: 2]:
                assert set(during) <= peer.live, (sender.name, peer.name)
        # Cross-process live delivery resumes: from `recovered_at` on, every message
        # reached every socket live.
        after = sorted((t, mid) for mid, t in acked_at.items() if t > back_at)
        missed = [t for t, mid in after if not all(mid in c.live for c in clients)]
        recovered_at = max(missed, default=back_at)
        assert [t for t, _ in after if t > recovered_at], "nothing live after"

        acks_down = [sum(down_at <= t <= back_at for t in c.ack_times) for c in clients]
        gaps = [max_gap(c.ack_times, down_at - 1, back_at + 1) for c in clients]
        print(
            f"\nRedis down {back_at - down_at:.1f} s: acks during it per client"
            f" {acks_down}, longest ack gap {max(gaps) * 1000:.0f} ms;"
            f" cross-process live delivery back {recovered_at - back_at:.2f} s and"
            f" presence {presence_back:.2f} s after Redis; audit {report}"
        )
        assert all(n >= (back_at - down_at) / 0.1 * 0.7 for n in acks_down)
        assert max(gaps) < 1.0, gaps
        assert recovered_at - back_at < 5
        assert not [e for c in everyone for e in c.errors], [c.errors for c in everyone]
        assert report["unacked"] == 0 and report["acked"] > 0
        assert report["lost_acked"] == 0
        assert report["stored"] == report["acked"] + 1  # and the REST post
        assert report["duplicated"] == 0
        assert report["lost_deliveries"] == 0
    finally:
        for client in clients:
            client.stop()
        sweeper.stop()
        first.stop()
        second.stop()


class Browser:
    """Pages over HTTP with a cookie jar, as a logged-in browser."""

    def __init__(self, server):
        self.base = server.base
        self.jar = http.cookiejar.CookieJar()
        self.opener = urllib.request.build_opener(
            urllib.request.HTTPCookieProcessor(self.jar), NoRedirects
        )

    def open(self, path, form=None):
        """(status, body) of a GET, or of a POST of `form` with the CSRF token."""
        data = None
        if form is not None:
            form = {**form, "csrfmiddlewaretoken": self.cookie("csrftoken")}
            data = urllib.parse.urlencode(form).encode()
        try:
            with self.opener.open(self.base + path, data, timeout=10) as response:
                return response.status, response.read().decode()
        except urllib.error.HTTPError as error:
            return error.code, error.headers.get("Location", "")

    def cookie(self, name):
        return next((c.value for c in self.jar if c.name == name), None)


class NoRedirects(urllib.request.HTTPRedirectHandler):
    def redirect_request(self, *args, **kwargs):
        return None


def test_a_logged_in_page_works_while_redis_is_down_and_logout_logs_out(
    transactional_db, settings, redis_server
):
    server = ServerProcess(**process_env(settings, redis_server.url)).start()
    try:
        server.register("alice")
        browser = Browser(server)
        assert browser.open("/login/")[0] == 200
        form = {"username": "alice", "password": "Correct-Horse-9"}
        assert browser.open("/login/", form)[0] == 302
        key = browser.cookie("sessionid")
        cached = f"{settings.REDIS_KEY_PREFIX}:1:django.contrib.sessions.cached_db{key}"
        store = redis.Redis.from_url(redis_server.url)
        assert store.exists(cached) and Session.objects.filter(pk=key).exists()

        redis_server.kill()
        status, page = browser.open("/")
        assert status == 200 and "alice" in page  # the session, from the database

        redis_server.start()  # empty
        status, page = browser.open("/")
        assert status == 200 and "alice" in page
        assert store.exists(cached)  # cached again
        assert browser.open("/logout/", {})[0] == 302
        assert not store.exists(cached)
        assert not Session.objects.filter(pk=key).exists()
        assert browser.open("/")[0] == 302  # to the login page
        store.close()
    finally:
        server.stop()

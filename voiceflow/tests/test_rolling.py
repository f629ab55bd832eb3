"""A rolling deploy (`deploy/cluster.py roll`) under traffic drops nothing: every web
process is replaced while contract-following clients post through HAProxy and REST
clients call the API in a loop; no call fails, no acked message is lost or stored
twice, every client comes back with every message, and no one is shown offline."""

import asyncio
import http.client
import itertools
import json
import subprocess
import sys
import threading
import time
import uuid

import pytest
import websockets

from bench.audit import history

from .clients import Client, audit, settle, steady_traffic
from .servers import ROOT, ServerProcess

pytestmark = [
    pytest.mark.e2e,
    pytest.mark.django_db(transaction=True),
    pytest.mark.one_pass("shared"),  # a deployment on PostgreSQL, its own Redis
]


class RestLoop(threading.Thread):
    """A REST client calling the API through HAProxy back to back, on one keep-alive
    connection as a browser would: every call's status (or error), and every
    presence listing of the room."""

    def __init__(self, base, token, slug):
        super().__init__(daemon=True)
        self.address = base.removeprefix("http://")
        self.headers = {
            "Authorization": f"Token {token}",
            "Content-Type": "application/json",
        }
        self.calls = [
            ("GET", f"/api/rooms/{slug}/presence/", None),
            ("GET", f"/api/rooms/{slug}/messages/?limit=20", None),
            ("POST", "/api/ws-ticket/", b"{}"),
        ]
        self.results = []  # (method, path, status or the error)
        self.listed = []  # the usernames each presence call listed
        self.stopped = threading.Event()

    def run(self):
        host, port = self.address.split(":")
        conn = http.client.HTTPConnection(host, int(port), timeout=10)
        for method, path, body in itertools.cycle(self.calls):
            if self.stopped.is_set():
                break
            try:
                conn.request(method, path, body, self.headers)
                response = conn.getresponse()
                data = response.read()
                self.results.append((method, path, response.status))
                if path.endswith("/presence/") and response.status == 200:
                    users = json.loads(data)["users"]
                    self.listed.append({u["username"] for u in users})
            except (OSError, http.client.HTTPException) as error:
                self.results.append((method, path, repr(error)))
                conn.close()
        conn.close()

    def stop(self):
        self.stopped.set()
        self.join(10)


class Watcher:
    """A user in the room on a web process outside the roll, so never moved itself:
    every presence and member event it is sent."""

    def __init__(self):
        self.events = []
        self.members = None
        self.joined = asyncio.Event()

    async def run(self, url, slug):
        async with websockets.connect(url) as socket:
            assert json.loads(await socket.recv())["type"] == "hello"
            await socket.send(json.dumps({"type": "join", "room": slug}))
            async for raw in socket:
                frame = json.loads(raw)
                if frame["type"] == "joined":
                    self.members = {m["username"] for m in frame["members"]}
                    self.joined.set()
                elif frame["type"] in ("presence", "member_joined", "member_left"):
                    self.events.append(frame)


def sweep_once(env):
    """One presence sweep (the sweeper's code, `manage.py sweep_presence`) on the
    deployment's Redis: its report."""
    done = subprocess.run(
        [sys.executable, "manage.py", "sweep_presence"],
        cwd=ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert done.returncode == 0, done.stdout + done.stderr
    return done.stdout.strip()


async def test_a_rolling_deploy_under_traffic_drops_nothing(cluster):
    api = cluster.api()
    run = uuid.uuid4().hex[:6]
    names = [f"r-{run}-{i}" for i in range(9)]
    tokens = [api.register(name) for name in names]
    watcher_token, rest_token = api.register(f"w-{run}"), api.register(f"x-{run}")
    slug = f"rolling-{run}"
    status, body = api.request(
        "POST", "/api/rooms/", {"name": slug, "slug": slug}, tokens[0]
    )
    assert status == 201, body
    # The watcher's own process: the deployment's Redis and database, no balancer.
    outside = ServerProcess(**cluster.web_env())
    starting = asyncio.ensure_future(asyncio.to_thread(outside.start))
    clients = [
        Client(f"c{i}", token, [cluster.base], room=slug)
        for i, token in enumerate(tokens)
    ]
    runs = [asyncio.ensure_future(c.run()) for c in clients]
    watcher = Watcher()
    # Several, so that requests are in flight at every moment of the roll.
    rests = [RestLoop(cluster.base, rest_token, slug) for _ in range(3)]
    watching = None
    try:
        await starting
        assert await settle(clients, timeout=15)
        sockets = {
            name: int(row["scur"]) for name, row in cluster.server_rows().items()
        }
        assert min(sockets.values()) >= 1, sockets  # spread over the three
        url = await asyncio.to_thread(outside.socket_url, watcher_token)
        watching = asyncio.ensure_future(watcher.run(url, slug))
        await asyncio.wait_for(watcher.joined.wait(), 10)
        assert set(names) <= watcher.members
        for rest in rests:
            rest.start()
        before = {f"web{n}": cluster.pid(f"web{n}") for n in (1, 2, 3)}

        traffic = asyncio.ensure_future(steady_traffic(clients, 120, 0.1))
        started = time.monotonic()
        rolled = await asyncio.to_thread(cluster.run, "roll", timeout=120)
        took = time.monotonic() - started
        traffic.cancel()
        assert rolled.returncode == 0, rolled.stdout + rolled.stderr
        print(f"\n{rolled.stdout}roll: {took:.1f} s under traffic")

        # Once the grace periods of the last sockets moved are over, a sweep applies
        # what is due: it must find no one to take offline or out of the room.
        grace = float(cluster.settings["VOICEFLOW_OFFLINE_GRACE"])
        await asyncio.sleep(max(0.0, grace - (time.monotonic() - started - took)))
        report = await asyncio.to_thread(
            sweep_once, {**cluster.env, **cluster.web_env()}
        )
        assert report.endswith("0 status changes, 0 members left"), report

        assert await settle(clients, timeout=20)
        for rest in rests:
            rest.stop()
        calls = [call for rest in rests for call in rest.results]
        listed = [users for rest in rests for users in rest.listed]
        after = {f"web{n}": cluster.pid(f"web{n}") for n in (1, 2, 3)}
        states = cluster.server_states()
        stored = await asyncio.to_thread(history, cluster.base, tokens[0], slug)
        result = audit(clients, stored)
        failed = [call for call in calls if call[2] != 200]
        codes = sorted({code for c in clients for code in c.close_codes}, key=str)
        print(f"audit: {result}")
        print(f"REST: {len(calls)} calls, failed {failed[:5]}")
        print(f"closes {codes}, moves {sum(len(c.close_codes) for c in clients)}")
        print(f"watcher saw {watcher.events}")

        assert all(before[name] != after[name] for name in before), (before, after)
        assert set(states.values()) == {"UP"}, states
        assert failed == [] and len(calls) > 300
        # Listed present at every look, and never announced gone to the watcher.
        assert listed and all(set(names) <= users for users in listed)
        gone = [
            e
            for e in watcher.events
            if e.get("user") in names
            and (e["type"] == "member_left" or e.get("status") == "offline")
        ]
        assert gone == []
        # Every client was moved by a drain (1012), never cut off, and came back.
        assert all(c.close_codes and set(c.close_codes) == {1012} for c in clients)
        assert all(c.connected and c.connects >= 2 for c in clients)
        assert result["acked"] == result["sent"] > 9 * 50
        assert (result["lost_acked"], result["duplicated"], result["unacked"]) == (
            0,
            0,
            0,
        )
        assert result["lost_deliveries"] == 0
    finally:
        for rest in rests:
            if rest.is_alive():
                rest.stop()
        for client in clients:
            client.stop()
        await asyncio.gather(*runs)
        if watching is not None:
            watching.cancel()
        outside.stop()

"""A deployment through HAProxy (deploy/cluster.py): a web process killed with kill -9
loses no acked message and duplicates none; its clients come back through the
balancer on the others."""

import asyncio
import csv
import io
import json
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import urllib.request
import uuid
from pathlib import Path

import pytest
import websockets

from bench.audit import history

from . import servers
from .clients import Client, audit, settle, steady_traffic, ticket_url
from .servers import ROOT, ServerProcess, free_port

pytestmark = [
    pytest.mark.e2e,
    pytest.mark.django_db(transaction=True),
    pytest.mark.one_pass("shared"),
]


class Cluster:
    """deploy/cluster.py's deployment on private ports, for one test."""

    def __init__(self, settings):
        self.state = Path(tempfile.mkdtemp(prefix="vf-cluster-"))
        self.port, self.stats_port = free_port(), free_port()
        self.web_ports = [free_port() for _ in range(3)]
        self.base = f"http://127.0.0.1:{self.port}"
        self.env = {
            **os.environ,
            "REDIS_KEY_PREFIX": settings.REDIS_KEY_PREFIX,
            "SECRET_KEY": "cluster-test-secret-key",
            "VOICEFLOW_FAST_PASSWORD_HASHER": "1",
            "VOICEFLOW_RATE_LIMIT_MULTIPLIER": "1000",
            "VOICEFLOW_OFFLINE_GRACE": "3",
            "VOICEFLOW_DRAIN_WINDOW": "0.5",
            "VOICEFLOW_DRAIN_TIMEOUT": "3",
            "WEB_CONCURRENCY": "1",
        }

    def run(self, command, *extra):
        return subprocess.run(
            [sys.executable, "deploy/cluster.py", command, "--state", str(self.state)]
            + list(extra),
            cwd=ROOT,
            env=self.env,
            capture_output=True,
            text=True,
            timeout=90,
        )

    def start(self):
        done = self.run(
            "start",
            "--port", str(self.port),
            "--stats-port", str(self.stats_port),
            "--web-ports", ",".join(map(str, self.web_ports)),
            "--redis-port", str(free_port()),
            "--pgbouncer-port", str(free_port()),
            "--database-url", servers.test_database_url(),
            "--no-migrate",
        )  # fmt: skip
        assert done.returncode == 0, done.stdout + done.stderr + self.output()
        return self

    def pid(self, name):
        return int((self.state / f"{name}.pid").read_text())

    def server_states(self):
        """HAProxy's view of each web process: {"web1": "UP", ...}."""
        url = f"http://127.0.0.1:{self.stats_port}/;csv"
        with urllib.request.urlopen(url, timeout=5) as response:
            rows = csv.DictReader(io.StringIO(response.read().decode().lstrip("# ")))
            return {
                row["svname"]: row["status"] for row in rows if row["pxname"] == "web"
            }

    def logged_client(self, connection_id):
        """The client address the web processes logged for a socket."""
        for log in (self.state / "logs").glob("web*.log"):
            for line in log.read_text().splitlines():
                if connection_id in line and "socket_connected" in line:
                    return json.loads(line)["client"]
        return None

    def output(self):
        """Every component's log tail (the conftest adds it to a failure report)."""
        return "".join(
            f"\n--- {log.name}\n{log.read_text(errors='replace')[-3000:]}"
            for log in sorted((self.state / "logs").glob("*.log"))
        )

    def stop(self):
        self.run("stop")
        shutil.rmtree(self.state, ignore_errors=True)


@pytest.fixture
def cluster(settings):
    for tool in ("haproxy", "redis-server", "pgbouncer"):
        if not shutil.which(tool):
            pytest.fail(f"{tool} is not on PATH (.ci/run installs Debian's package).")
    deployment = Cluster(settings)
    servers.started.append(deployment)
    yield deployment.start()
    deployment.stop()


async def recovery_after(clients, killed_at, timeout):
    """Seconds from the kill until every client whose socket it closed is joined
    again (through the balancer, so on another process); None if not in time."""
    loop = asyncio.get_running_loop()
    closes = {c: len(c.close_codes) for c in clients}
    connects = {c: c.connects for c in clients}
    while loop.time() - killed_at < timeout:
        hit = [c for c in clients if len(c.close_codes) > closes[c]]
        if hit and all(c.connected and c.connects > connects[c] for c in hit):
            return loop.time() - killed_at, len(hit)
        await asyncio.sleep(0.02)
    return None, 0


async def test_a_web_process_killed_behind_haproxy_loses_and_duplicates_nothing(
    cluster,
):
    api = ServerProcess.__new__(ServerProcess)
    api.base = cluster.base  # every request through the balancer
    run = uuid.uuid4().hex[:6]
    tokens = [api.register(f"c-{run}-{i}") for i in range(9)]
    slug = f"cluster-{run}"
    status, body = api.request(
        "POST", "/api/rooms/", {"name": slug, "slug": slug}, tokens[0]
    )
    assert status == 201, body
    clients = [
        Client(f"c{i}", token, [cluster.base], room=slug)
        for i, token in enumerate(tokens)
    ]
    runs = [asyncio.ensure_future(c.run()) for c in clients]
    try:
        assert await settle(clients, timeout=15)
        assert set(cluster.server_states().values()) == {"UP"}
        # A client's own X-Forwarded-For is not believed: only HAProxy's address is
        # a trusted proxy, and HAProxy adds the client's address after it.
        url = await asyncio.to_thread(ticket_url, cluster.base, tokens[0])
        forged = {"X-Forwarded-For": "203.0.113.9"}
        async with websockets.connect(url, additional_headers=forged) as socket:
            connection = json.loads(await socket.recv())["connection_id"]
        assert cluster.logged_client(connection) == "127.0.0.1"

        loop = asyncio.get_running_loop()

        async def kill_after(seconds):
            await asyncio.sleep(seconds)
            os.killpg(cluster.pid("web1"), signal.SIGKILL)  # it and any workers
            return loop.time()

        traffic = asyncio.ensure_future(steady_traffic(clients, 6, 0.05))
        killed_at = await kill_after(2)
        recovery, moved = await recovery_after(clients, killed_at, timeout=15)
        await traffic
        assert await settle(clients, timeout=20)
        states = cluster.server_states()
        stored = await asyncio.to_thread(history, cluster.base, tokens[0], slug)
        report = audit(clients, stored)
        print(f"\nkill -9: {moved} clients back in {recovery} s; HAProxy {states}")
        print(f"audit: {report}")
        assert moved >= 1 and recovery < 10
        assert states["web1"].startswith("DOWN")
        assert report["acked"] == report["sent"] > 9 * 50  # 20/s each, for 6 s
        assert (report["lost_acked"], report["duplicated"], report["unacked"]) == (
            0,
            0,
            0,
        )
        assert report["lost_deliveries"] == 0
    finally:
        for client in clients:
            client.stop()
        await asyncio.gather(*runs)

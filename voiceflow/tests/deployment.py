"""deploy/cluster.py's deployment on private ports, for the tests that run one
(test_cluster, test_rolling, test_redis_failover): the `cluster` fixture
(voiceflow/tests/conftest.py)."""

import csv
import io
import json
import os
import shutil
import subprocess
import sys
import tempfile
import urllib.request
import uuid
from pathlib import Path

import redis

from . import servers
from .servers import ROOT, ServerProcess, free_port

SENTINEL_MASTER = "voiceflow"  # deploy/cluster.py's name for the primary


class Cluster:
    """HAProxy, three web processes, PgBouncer, a Redis primary with a replica and
    three Sentinels, and the sweeper, for one test; every component's log goes with
    its failure report."""

    def __init__(self, settings):
        self.state = Path(tempfile.mkdtemp(prefix="vf-cluster-"))
        self.port, self.stats_port = free_port(), free_port()
        self.web_ports = [free_port() for _ in range(3)]
        self.redis_ports = [free_port(), free_port()]  # primary, replica at the start
        self.sentinel_ports = [free_port() for _ in range(3)]
        self.base = f"http://127.0.0.1:{self.port}"
        # Timings shrunk for tests; `roll` runs with the same environment.
        self.settings = {
            "REDIS_KEY_PREFIX": settings.REDIS_KEY_PREFIX,
            "SECRET_KEY": "cluster-test-secret-key",
            "VOICEFLOW_FAST_PASSWORD_HASHER": "1",
            "VOICEFLOW_RATE_LIMIT_MULTIPLIER": "1000",
            "VOICEFLOW_OFFLINE_GRACE": "3",
            "VOICEFLOW_DRAIN_WINDOW": "0.5",
            "VOICEFLOW_DRAIN_TIMEOUT": "3",
            "WEB_CONCURRENCY": "1",
        }
        self.env = {**os.environ, **self.settings}

    def run(self, command, *extra, timeout=90):
        return subprocess.run(
            [sys.executable, "deploy/cluster.py", command, "--state", str(self.state)]
            + list(extra),
            cwd=ROOT,
            env=self.env,
            capture_output=True,
            text=True,
            timeout=timeout,
        )

    def start(self):
        done = self.run(
            "start",
            "--port", str(self.port),
            "--stats-port", str(self.stats_port),
            "--web-ports", ",".join(map(str, self.web_ports)),
            "--redis-port", str(self.redis_ports[0]),
            "--redis-replica-port", str(self.redis_ports[1]),
            "--sentinel-ports", ",".join(map(str, self.sentinel_ports)),
            "--pgbouncer-port", str(free_port()),
            "--database-url", servers.test_database_url(),
            "--no-migrate",
        )  # fmt: skip
        assert done.returncode == 0, done.stdout + done.stderr + self.output()
        return self

    def api(self):
        """A REST client of the deployment: every request through HAProxy."""
        api = ServerProcess.__new__(ServerProcess)
        api.base = self.base
        return api

    def room_with_users(self, prefix, count):
        """A new room and `count` new users' tokens, through the balancer: (slug,
        tokens); the first user created the room."""
        api = self.api()
        run = uuid.uuid4().hex[:6]
        tokens = [api.register(f"{prefix}-{run}-{i}") for i in range(count)]
        slug = f"{prefix}-{run}"
        status, body = api.request(
            "POST", "/api/rooms/", {"name": slug, "slug": slug}, tokens[0]
        )
        assert status == 201, body
        return slug, tokens

    def pid(self, name):
        return int((self.state / f"{name}.pid").read_text())

    def web_env(self):
        """What the web processes run with: the test's settings and the deployment's
        own (its Redis, the database through PgBouncer)."""
        own = json.loads((self.state / "web.json").read_text())["env"]
        return {**own, **self.settings}

    def server_states(self):
        """HAProxy's view of each web process: {"web1": "UP", ...}."""
        return {name: row["status"] for name, row in self.server_rows().items()}

    def server_rows(self):
        """HAProxy's stats row of each web process (status, scur: sockets open...)."""
        url = f"http://127.0.0.1:{self.stats_port}/;csv"
        with urllib.request.urlopen(url, timeout=5) as response:
            rows = csv.DictReader(io.StringIO(response.read().decode().lstrip("# ")))
            return {
                row["svname"]: row
                for row in rows
                if row["pxname"] == "web" and row["svname"] != "BACKEND"
            }

    def redis_primary_port(self, sentinel=0):
        """The primary's port, as Sentinel number `sentinel` names it now."""
        client = redis.Redis(port=self.sentinel_ports[sentinel], socket_timeout=2)
        try:
            return int(client.sentinel_get_master_addr_by_name(SENTINEL_MASTER)[1])
        finally:
            client.close()

    def connection_processes(self):
        """{connection id: "web1", ...}: which web process each socket connected to."""
        found = {}
        for log in (self.state / "logs").glob("web*.log"):
            for line in log.read_text(errors="replace").splitlines():
                if "socket_connected" in line and line.startswith("{"):
                    found[json.loads(line)["connection_id"]] = log.stem
        return found

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

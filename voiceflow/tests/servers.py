"""Real VoiceFlow server processes for end-to-end tests, started from the Procfile."""

import json
import os
import re
import signal
import socket
import subprocess
import sys
import tempfile
import time
import urllib.error
import urllib.request
from pathlib import Path

from django.conf import settings
from django.db import connection

ROOT = Path(__file__).resolve().parents[2]


# Ports handed out in this run: bind(0) may hand the same free port out twice before
# either server binds it, and two tests' servers must never share one.
_ports_given = set()
# Server processes started in the running test (their logs go with its failure report).
started = []


def free_port():
    while True:
        with socket.socket() as sock:
            sock.bind(("127.0.0.1", 0))
            port = sock.getsockname()[1]
        if port not in _ports_given:
            _ports_given.add(port)
            return port


def procfile_command(name):
    text = (ROOT / "Procfile").read_text()
    match = re.search(rf"^{name}:\s*(.+)$", text, re.MULTILINE)
    assert match, f"Procfile has no {name} line"
    return match.group(1)


def test_database_url():
    """A DATABASE_URL for the database this test run uses (SQLite or PostgreSQL)."""
    conf = connection.settings_dict
    if connection.vendor == "sqlite":
        return f"sqlite:///{conf['NAME']}"
    user = conf.get("USER") or "postgres"
    host, port = conf["HOST"] or "127.0.0.1", conf["PORT"] or 5432
    return f"postgres://{user}@{host}:{port}/{conf['NAME']}"


def child_pids(pid):
    """The live processes whose parent is `pid` (a web process's workers)."""
    children = []
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            state, parent = stat.read_text().rsplit(")", 1)[1].split()[:2]
        except (OSError, ValueError):
            continue
        if int(parent) == pid and state != "Z":
            children.append(int(stat.parent.name))
    return sorted(children)


def socket_inodes(pid):
    """Inodes of the sockets process `pid` holds open."""
    inodes = set()
    for fd in Path(f"/proc/{pid}/fd").iterdir():
        try:
            target = os.readlink(fd)
        except OSError:
            continue
        if target.startswith("socket:["):
            inodes.add(int(target[8:-1]))
    return inodes


def tcp_inodes(local_port, remote_port=None):
    """Inodes of this machine's IPv4 TCP sockets on `local_port` (and `remote_port`):
    a listening socket with remote_port 0."""
    found = set()
    for line in Path("/proc/net/tcp").read_text().splitlines()[1:]:
        fields = line.split()
        local, remote = (
            int(fields[1].split(":")[1], 16),
            int(fields[2].split(":")[1], 16),
        )
        if local == local_port and remote_port in (None, remote):
            found.add(int(fields[9]))
    return found


class ServerProcess:
    """One `web` process of the Procfile on a free port, sharing this run's database."""

    def __init__(self, port=None, **env):
        # A given port (e.g. the one of a process just stopped) stands for a restart.
        self.port = port or free_port()
        self.base = f"http://127.0.0.1:{self.port}"
        self.ws_url = f"ws://127.0.0.1:{self.port}/ws/chat/"
        self.env = {
            **os.environ,
            "PATH": f"{Path(sys.executable).parent}{os.pathsep}{os.environ['PATH']}",
            "PORT": str(self.port),
            "HOST": "127.0.0.1",
            "DATABASE_URL": test_database_url(),
            "DEBUG": "0",
            "SECRET_KEY": "end-to-end-test-secret-key",
            "VOICEFLOW_FAST_PASSWORD_HASHER": "1",
            # This test's own prefix (see conftest), so no state outlives the test.
            "REDIS_KEY_PREFIX": settings.REDIS_KEY_PREFIX,
            **env,
        }
        self.env.pop("DJANGO_SETTINGS_MODULE", None)
        self.process = None
        self.log_path = (
            Path(os.environ.get("TMPDIR", "/tmp")) / f"voiceflow-e2e-{self.port}.log"
        )

    def start(self, timeout=20):
        self.log = open(self.log_path, "wb")
        self.process = subprocess.Popen(
            ["bash", "-c", f"exec {procfile_command('web')}"],
            cwd=ROOT,
            env=self.env,
            stdout=self.log,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
        started.append(self)
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                raise RuntimeError(f"server exited at start:\n{self.output()}")
            # Ours only once it says it listens: another process on the port (a
            # lingering server) must not pass for it.
            if f"running on {self.base} " not in self.output():
                time.sleep(0.05)
                continue
            try:
                urllib.request.urlopen(self.base + "/login/", timeout=1).read()
                return self
            except (urllib.error.URLError, ConnectionError, TimeoutError):
                time.sleep(0.1)
        raise RuntimeError(
            f"server did not answer within {timeout} s:\n{self.output()}"
        )

    def workers(self):
        """The pids of this web process's workers (none with WEB_CONCURRENCY=1)."""
        return child_pids(self.process.pid)

    def workers_started(self, count, timeout=30):
        """Wait until `count` workers have loaded the app, in all; their pids."""
        deadline = time.monotonic() + timeout
        while self.output().count("Started server process") < count:
            if time.monotonic() > deadline:
                raise RuntimeError(f"workers did not start:\n{self.output()}")
            time.sleep(0.05)
        return self.workers()

    def output(self):
        if not self.log.closed:
            self.log.flush()
        return self.log_path.read_text(errors="replace")

    def stop(self, sig=signal.SIGTERM, timeout=15):
        if self.process and self.process.poll() is None:
            self.process.send_signal(sig)
            try:
                self.process.wait(timeout)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait()
        if self.process:
            self.log.close()
        return self.process.returncode

    def request(self, method, path, data=None, token=None):
        """(status, JSON body) of an API call."""
        headers = {"Content-Type": "application/json"}
        if token:
            headers["Authorization"] = f"Token {token}"
        body = None if data is None else json.dumps(data).encode()
        req = urllib.request.Request(self.base + path, body, headers, method=method)
        try:
            with urllib.request.urlopen(req, timeout=10) as response:
                raw = response.read()
                return response.status, json.loads(raw) if raw else None
        except urllib.error.HTTPError as error:
            raw = error.read()
            return error.code, json.loads(raw) if raw.startswith(b"{") else raw

    def register(self, username, password="Correct-Horse-9"):
        status, body = self.request(
            "POST", "/api/auth/register/", {"username": username, "password": password}
        )
        assert status == 201, body
        return body["token"]

    def socket_url(self, token):
        status, body = self.request("POST", "/api/ws-ticket/", {}, token)
        assert status == 200, body
        return f"{self.ws_url}?ticket={body['ticket']}"


class SweeperProcess:
    """The Procfile's `sweeper` (sweep_presence --loop), at a test's own interval."""

    def __init__(self, server, interval=0.2):
        self.env = server.env
        self.interval = interval
        self.process = None

    def start(self):
        command = procfile_command("sweeper").replace(
            "--interval 15", f"--interval {self.interval}"
        )
        self.process = subprocess.Popen(
            ["bash", "-c", f"exec {command}"],
            cwd=ROOT,
            env=self.env,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
            start_new_session=True,
        )
        return self

    def stop(self):
        if self.process and self.process.poll() is None:
            self.process.terminate()
            try:
                self.process.wait(10)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait()


class RedisServer:
    """A private redis-server on a free port, for fault tests (never the shared one)."""

    def __init__(self, *options, config=None):
        # `options` are more redis-server arguments (e.g. --replicaof, --sentinel);
        # a Sentinel needs a `config` file it can rewrite.
        self.port = free_port()
        self.url = f"redis://127.0.0.1:{self.port}/0"
        self.config = [str(config)] if config else []
        self.options = list(options)
        self.process = None
        # A replica writes the primary's snapshot to its dir even with --save "".
        self.dir = tempfile.TemporaryDirectory(prefix="vf-redis-")

    def start(self, timeout=10):
        self.process = subprocess.Popen(
            [
                "redis-server",
                *self.config,
                "--bind",
                "127.0.0.1",
                "--port",
                str(self.port),
                "--save",
                "",
                "--appendonly",
                "no",
                "--dir",
                self.dir.name,
                *self.options,
            ],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
            start_new_session=True,
        )
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            try:
                with socket.create_connection(
                    ("127.0.0.1", self.port), timeout=0.5
                ) as conn:
                    conn.sendall(b"PING\r\n")
                    if conn.recv(16).startswith(b"+PONG"):
                        return self
            except OSError:
                time.sleep(0.05)
        self.kill()
        raise RuntimeError(f"redis-server did not answer on port {self.port}")

    def kill(self):
        if self.process and self.process.poll() is None:
            self.process.kill()
            self.process.wait(10)

    def restart(self, down_for=0.0):
        """Kill it (SIGKILL: all data gone) and start it again on the same port."""
        self.kill()
        time.sleep(down_for)
        return self.start()

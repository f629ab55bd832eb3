"""WEB_CONCURRENCY: one web process, several workers on its one listening socket."""

import asyncio
import json
import os
import signal
import time
import urllib.request
from pathlib import Path

import pytest
import websockets

from .servers import ServerProcess, socket_inodes, tcp_inodes
from .test_delivery import closed_code, process_env, shared_redis  # noqa: F401
from .test_e2e import frame

pytestmark = [pytest.mark.e2e, pytest.mark.django_db(transaction=True)]


@pytest.fixture
def two_workers(settings, shared_redis):  # noqa: F811
    """two_workers(drain_window, drain_timeout): a web process with two workers."""
    started = []

    def start(drain_window, drain_timeout):
        env = process_env(
            settings,
            shared_redis,
            WEB_CONCURRENCY=2,
            VOICEFLOW_DRAIN_WINDOW=drain_window,
            VOICEFLOW_DRAIN_TIMEOUT=drain_timeout,
        )
        started.append(ServerProcess(**env).start())
        return started[-1]

    yield start
    for server in started:
        server.stop()


def wait_for(predicate, timeout=10, what="condition"):
    deadline = time.monotonic() + timeout
    while not (value := predicate()):
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out waiting for {what}")
        time.sleep(0.05)
    return value


def running(pids):
    """Those of `pids` still running (an exited orphan may stay a zombie a while)."""
    return [pid for pid in pids if child_state(pid) not in (None, "Z")]


def child_state(pid):
    try:
        return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except FileNotFoundError:
        return None


def holder(server, workers, socket):
    """The worker holding the server side of a client socket."""
    inodes = tcp_inodes(server.port, socket.local_address[1])
    return next(pid for pid in workers if socket_inodes(pid) & inodes)


@pytest.mark.one_pass("shared")
async def test_workers_share_the_port_and_all_drain_on_sigterm(lobby, two_workers):
    server = two_workers(drain_window=1, drain_timeout=5)
    workers = await asyncio.to_thread(server.workers_started, 2)
    assert len(workers) == 2 and server.process.pid not in workers
    listening = tcp_inodes(server.port, 0)
    assert all(socket_inodes(pid) & listening for pid in workers)

    token = server.register("alice")
    sockets = []
    for _ in range(12):
        sockets.append(await websockets.connect(server.socket_url(token)))
        assert (await frame(sockets[-1]))["type"] == "hello"
    held = [holder(server, workers, socket) for socket in sockets]
    print(f"sockets per worker: {[held.count(pid) for pid in workers]}")

    server.process.send_signal(signal.SIGTERM)
    stopped = time.monotonic()
    codes = await asyncio.gather(*(closed_code(s) for s in sockets))
    assert {code for code, _ in codes} == {1012}  # drained, every worker's
    assert await asyncio.to_thread(server.process.wait, 10) == 0
    assert time.monotonic() - stopped < 5 + 1
    assert not running(workers)


@pytest.mark.one_pass("shared")
async def test_a_killed_worker_is_replaced_and_orphans_drain(lobby, two_workers):
    server = two_workers(drain_window=0.5, drain_timeout=3)
    first, second = await asyncio.to_thread(server.workers_started, 2)
    os.kill(first, signal.SIGKILL)
    workers = await asyncio.to_thread(server.workers_started, 3)
    assert second in workers and first not in workers and len(workers) == 2
    assert "died with -9; starting another" in server.output()
    token = server.register("alice")
    for _ in range(6):  # whichever worker accepts, each answers
        async with websockets.connect(server.socket_url(token)) as socket:
            assert (await frame(socket))["type"] == "hello"

    # The supervisor killed: its workers notice, drain and exit.
    server.process.kill()
    server.process.wait()
    await asyncio.to_thread(
        wait_for,
        lambda: not running(workers),
        8,
        "orphaned workers to exit",
    )


@pytest.mark.one_pass("embedded")
def test_embedded_mode_runs_one_process_whatever_web_concurrency_says(
    transactional_db,
):
    server = ServerProcess(WEB_CONCURRENCY="3", REDIS_URL="").start()
    try:
        assert "WEB_CONCURRENCY=3 ignored" in server.output()
        assert server.workers() == []
        with urllib.request.urlopen(server.base + "/health/live", timeout=5) as r:
            assert json.loads(r.read()) == {"status": "live"}
    finally:
        server.stop()

"""`manage.py sweep_presence`: what a crashed server process leaves behind is swept.

These run against a private redis-server (in both passes of `make test`), real server
processes from the Procfile, and this run's database.
"""

import asyncio
import json
import signal
import subprocess
import sys
import time
import uuid

import pytest
import websockets
from django.core.management import call_command

from voiceflow.tests.servers import ROOT, ServerProcess

pytestmark = [pytest.mark.e2e, pytest.mark.django_db(transaction=True)]

DEAD_AFTER, TOUCH, GRACE = 1.5, 0.2, 0.5


def shared_env(redis_url):
    return {
        "REDIS_URL": redis_url,
        "REDIS_KEY_PREFIX": f"vfcrash{uuid.uuid4().hex[:8]}",
        "VOICEFLOW_DEAD_AFTER": str(DEAD_AFTER),
        "VOICEFLOW_PRESENCE_TOUCH_INTERVAL": str(TOUCH),
        "VOICEFLOW_OFFLINE_GRACE": str(GRACE),
    }


def sweep(env, *args, timeout=30):
    """Run the Procfile's sweeper command once (same environment as the servers)."""
    return subprocess.run(
        [sys.executable, "manage.py", "sweep_presence", *args],
        cwd=ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=timeout,
    )


async def recv(socket, timeout=5):
    return json.loads(await asyncio.wait_for(socket.recv(), timeout))


async def open_joined(server, token):
    """A socket joined to the lobby, and its `joined` reply (its own member_joined,
    which follows, is consumed)."""
    socket = await websockets.connect(server.socket_url(token))
    hello = await recv(socket)
    await socket.send(json.dumps({"type": "join", "room": "lobby"}))
    while (reply := await recv(socket))["type"] != "joined":
        pass
    own = {"type": "member_joined", "room": "lobby", "user": hello["user"]}
    while await recv(socket) != own:
        pass
    return socket, reply


async def events_for(socket, seconds, until=None):
    """Presence and member events that reach `socket` within `seconds` (or until
    `until` of them arrived)."""
    got, deadline = [], time.monotonic() + seconds
    while (left := deadline - time.monotonic()) > 0 and len(got) != until:
        try:
            frame = await recv(socket, left)
        except TimeoutError:
            break
        if frame["type"] in ("presence", "member_joined", "member_left"):
            got.append(frame)
    return got


async def heartbeat(socket):
    while True:
        await socket.send(json.dumps({"type": "ping", "ts": 1}))
        await asyncio.sleep(TOUCH)


async def test_a_killed_process_is_swept_and_its_users_leave_for_the_other_process(
    private_redis, lobby
):
    env = shared_env(private_redis)
    doomed, survivor = ServerProcess(**env), ServerProcess(**env)
    try:
        await asyncio.gather(*(asyncio.to_thread(s.start) for s in (doomed, survivor)))
        alice_token, bob_token = doomed.register("alice"), survivor.register("bob")
        alice, _ = await open_joined(doomed, alice_token)
        bob, joined = await open_joined(survivor, bob_token)
        assert joined["members"] == [
            {"username": "alice", "status": "online"},
            {"username": "bob", "status": "online"},
        ]
        beat = asyncio.create_task(heartbeat(bob))  # bob stays alive throughout

        doomed.stop(signal.SIGKILL)  # no disconnect handler runs, nothing is cleaned up
        assert (
            await events_for(bob, DEAD_AFTER + TOUCH + 0.3) == []
        )  # nobody else knows

        result = await asyncio.to_thread(sweep, doomed.env)
        assert result.returncode == 0, result.stderr
        assert "removed 1 dead sockets" in result.stdout, result.stdout
        assert await events_for(bob, 5, until=2) == [
            {"type": "presence", "user": "alice", "status": "offline"},
            {"type": "member_left", "room": "lobby", "user": "alice"},
        ]
        status, body = await asyncio.to_thread(
            survivor.request, "GET", "/api/rooms/lobby/presence/", None, bob_token
        )
        assert status == 200
        assert [u["username"] for u in body["users"]] == ["bob"]

        beat.cancel()
        await bob.close()
        await alice.close()
    finally:
        doomed.stop()
        survivor.stop()


def test_the_loop_prints_one_line_per_run(private_redis):
    env = {**ServerProcess().env, **shared_env(private_redis)}
    process = subprocess.Popen(
        [sys.executable, "manage.py", "sweep_presence", "--loop", "--interval", "0.1"],
        cwd=ROOT,
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )
    try:
        lines = [process.stdout.readline() for _ in range(3)]
    finally:
        process.kill()
        process.wait()
    assert all(
        line.startswith("presence sweep: removed 0 dead sockets") for line in lines
    ), lines


def test_in_embedded_mode_the_command_says_the_web_process_sweeps_itself(
    settings, capsys
):
    settings.REDIS_URL = ""
    call_command("sweep_presence")
    assert "the web process, which sweeps itself" in capsys.readouterr().out


def test_in_embedded_mode_the_loop_stays_up_instead_of_exiting(tmp_path):
    env = {**ServerProcess().env, "REDIS_URL": "", "DEBUG": "1"}
    process = subprocess.Popen(
        [sys.executable, "manage.py", "sweep_presence", "--loop"],
        cwd=ROOT,
        env=env,
        stdout=subprocess.PIPE,
        text=True,
    )
    try:
        assert "sweeps itself" in process.stdout.readline()
        with pytest.raises(subprocess.TimeoutExpired):
            process.wait(1.5)
    finally:
        process.kill()
        process.wait()

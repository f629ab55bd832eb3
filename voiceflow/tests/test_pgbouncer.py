"""Behind PgBouncer in transaction pooling (DATABASE_POOL_MODE=transaction)."""

import asyncio
import json
import shutil
import tempfile

import pytest

from deploy import cluster

from . import servers
from .servers import ServerProcess, free_port
from .test_e2e import frame, open_joined

pytestmark = [
    pytest.mark.e2e,
    pytest.mark.django_db(transaction=True),
    pytest.mark.one_pass("shared"),  # PgBouncer pools PostgreSQL connections
]


@pytest.fixture
def pgbouncer():
    """A private PgBouncer in transaction mode in front of this run's database: its
    URL. Two server connections for the process's many client connections, so one
    client connection's statements run on both."""
    if not shutil.which("pgbouncer"):
        pytest.fail("pgbouncer is not on PATH (.ci/run installs Debian's package).")
    state = cluster.State(tempfile.mkdtemp(prefix="vf-pgbouncer-"))
    database = servers.test_database_url()
    url = cluster.pgbouncer_start(state, free_port(), database, pool_size=2)
    yield url
    state.stop("pgbouncer", timeout=5)
    shutil.rmtree(state.path, ignore_errors=True)


def message(body, client_id):
    return json.dumps(
        {"type": "message", "room": "lobby", "body": body, "client_id": client_id}
    )


async def acks(socket, count):
    """The next `count` acks on `socket`; an error frame fails the test."""
    got = []
    while len(got) < count:
        data = await frame(socket, timeout=10)
        assert data["type"] != "error", data
        if data["type"] == "ack":
            got.append(data)
    return got


async def joined_frame(socket):
    """The next `joined` frame (broadcasts of the burst may come first)."""
    while (data := await frame(socket, timeout=10))["type"] != "joined":
        assert data["type"] != "error", data
    return data


async def test_messages_and_history_through_pgbouncer_in_transaction_mode(
    lobby, pgbouncer, settings
):
    server = ServerProcess(
        DATABASE_URL=pgbouncer,
        DATABASE_POOL_MODE="transaction",
        REDIS_KEY_PREFIX=settings.REDIS_KEY_PREFIX,
        VOICEFLOW_RATE_LIMIT_MULTIPLIER="1000",
    )
    await asyncio.to_thread(server.start)
    try:
        tokens = [server.register(f"user{i}") for i in range(3)]  # the ORM's path
        sockets = [await open_joined(server, token) for token in tokens]
        acked = []
        # One at a time: the same insert again and again on the same client
        # connection (psycopg would prepare it from the fifth on).
        for n in range(12):
            await sockets[0].send(message(f"one {n}", f"one-{n}"))
            acked += await acks(sockets[0], 1)
        # Then all at once from every socket (group commits of varying size).
        for i, socket in enumerate(sockets):
            for n in range(15):
                await socket.send(message(f"burst {i} {n}", f"burst-{i}-{n}"))
        for socket in sockets:
            acked += await acks(socket, 15)
        assert sorted(ack["seq"] for ack in acked) == list(range(1, 58))

        for since in range(8):
            # Plain joins run on the loop's reader connections, joins with `since`
            # on a thread through Django's pool.
            await sockets[1].send(json.dumps({"type": "join", "room": "lobby"}))
            assert (await joined_frame(sockets[1]))["last_seq"] == 57
            join = {"type": "join", "room": "lobby", "since": since}
            await sockets[1].send(json.dumps(join))
            joined = await joined_frame(sockets[1])
            assert [m["seq"] for m in joined["missed"]] == list(range(since + 1, 58))

        status, page = server.request(
            "GET", "/api/rooms/lobby/messages/?limit=200", token=tokens[2]
        )
        assert status == 200, page
        assert {m["id"] for m in page["results"]} == {ack["id"] for ack in acked}
        for socket in sockets:
            await socket.close()
    finally:
        server.stop()

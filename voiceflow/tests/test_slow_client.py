"""End to end: a client that stops reading while its room talks is closed with 1013
once the server holds too much unread output for it, then recovers by seq."""

import asyncio
import json
import socket
import urllib.request

import pytest
import websockets
from prometheus_client.parser import text_string_to_metric_families

from .servers import ServerProcess

pytestmark = [pytest.mark.e2e, pytest.mark.django_db(transaction=True)]

# Above what a socket that keeps up holds (its write buffer's 64 KiB high-water mark
# plus up to 64 KiB of frames queued in one loop turn).
SOFT, HARD = 144 * 1024, 256 * 1024


@pytest.fixture
def slow_server(transactional_db, lobby, settings):
    process = ServerProcess(
        REDIS_KEY_PREFIX=settings.REDIS_KEY_PREFIX,
        VOICEFLOW_SOCKET_SOFT_BYTES=str(SOFT),
        VOICEFLOW_SOCKET_HARD_BYTES=str(HARD),
        VOICEFLOW_RATE_LIMIT_MULTIPLIER="1000",
        # The keepalive would close the stalled client too (1011): not this test's.
        VOICEFLOW_WS_PING_INTERVAL="600",
    ).start()
    yield process
    process.stop()


def overflow_closed(server):
    with urllib.request.urlopen(server.base + "/metrics", timeout=5) as response:
        text = response.read().decode()
    for family in text_string_to_metric_families(text):
        if family.name == "voiceflow_socket_overflow_closed":
            return sum(s.value for s in family.samples if s.name.endswith("_total"))
    return 0


def output_bytes(server):
    status, body = server.request("GET", "/health")
    return body["metrics"]["sockets"]["outputBytes"]


async def next_of(client, kind, timeout=5):
    while True:
        frame = json.loads(await asyncio.wait_for(client.recv(), timeout))
        if frame["type"] == kind:
            return frame


async def joined(url, since=None, **kwargs):
    client = await websockets.connect(url, max_size=None, **kwargs)
    await next_of(client, "hello")
    join = {"type": "join", "room": "lobby"}
    if since is not None:
        join["since"] = since
    await client.send(json.dumps(join))
    return client, await next_of(client, "joined")


async def test_a_client_that_stops_reading_is_closed_with_1013_and_recovers(
    slow_server,
):
    server = slow_server
    reader_token, writer_token = server.register("slow"), server.register("chatty")
    # A small receive buffer, and a client library that stops reading from the
    # socket once a few frames wait unread: the kernel's buffers fill quickly.
    sock = socket.socket()
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
    sock.connect(("127.0.0.1", server.port))
    reader, _ = await joined(server.socket_url(reader_token), sock=sock, max_queue=2)
    writer, _ = await joined(server.socket_url(writer_token))

    body = "x" * 4000
    posted, largest = 0, 0
    while not overflow_closed(server):
        assert posted < 4000, "the stalled client was never closed"
        for _ in range(4):
            posted += 1
            await writer.send(
                json.dumps(
                    {
                        "type": "message",
                        "room": "lobby",
                        "body": body,
                        "client_id": f"m{posted}",
                    }
                )
            )
        for _ in range(4):
            await next_of(writer, "ack")
        largest = max(largest, output_bytes(server))

    # The server held up to the hard cap (plus a frame) for it, never more.
    assert 64 * 1024 < largest <= HARD + 8 * 1024
    # Reading again, the client gets what was sent before the close, in order, and
    # then the close: 1013, "try again later".
    seqs = []
    with pytest.raises(websockets.ConnectionClosed) as closed:
        while True:
            frame = json.loads(await asyncio.wait_for(reader.recv(), 10))
            if frame["type"] == "message":
                seqs.append(frame["seq"])
    assert closed.value.rcvd.code == 1013
    assert seqs and seqs == list(range(1, len(seqs) + 1))
    assert len(seqs) < posted  # the rest were not kept for it

    # It reconnects and gets what it missed by seq.
    again, reply = await joined(server.socket_url(reader_token), since=seqs[-1])
    assert reply["missed"][0]["seq"] == seqs[-1] + 1
    assert reply["last_seq"] == posted
    await again.close()
    await writer.close()

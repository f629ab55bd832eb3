"""A socket whose client reads slower than its rooms talk: past the soft cap of unread
output it misses typing and presence, past the hard cap it is closed with 1013."""

import asyncio

import pytest
from asgiref.sync import sync_to_async
from channels.testing import WebsocketCommunicator
from prometheus_client import REGISTRY

from chat.consumers import _start_eagerly
from chat.tickets import ticket_issue
from voiceflow.asgi import application
from voiceflow.runtime.websocket import OUTPUT_EXTENSION, _Flag

pytestmark = pytest.mark.django_db(transaction=True)

SOFT, HARD = 2_000, 10_000


class Unread:
    """Stands in for the server's count of a socket's output not read yet."""

    def __init__(self):
        self.bytes = 0

    def __call__(self):
        return self.bytes


@pytest.fixture(autouse=True)
def caps(presence_conf, lobby):
    presence_conf(
        SOCKET_SOFT_BYTES=SOFT, SOCKET_HARD_BYTES=HARD, PRESENCE_EVENT_INTERVAL=0
    )


async def connect(user, unread=None):
    ticket = await sync_to_async(ticket_issue)(user.pk)
    socket = WebsocketCommunicator(application, f"/ws/chat/?ticket={ticket}")
    if unread is not None:
        socket.scope["extensions"] = {OUTPUT_EXTENSION: unread}
    assert (await socket.connect())[0]
    assert (await socket.receive_json_from())["type"] == "hello"
    await socket.send_json_to({"type": "join", "room": "lobby"})
    while (await socket.receive_json_from())["type"] != "joined":
        pass
    return socket


async def frames(socket, quiet=0.2):
    got = []
    while not await socket.receive_nothing(timeout=quiet):
        got.append(await socket.receive_json_from())
    return got


async def frames_through(socket, kind, timeout=5):
    """Every frame up to and including the first of type `kind`."""
    got = []
    while not got or got[-1]["type"] != kind:
        got.append(await socket.receive_json_from(timeout=timeout))
    return got


def counted(name, **labels):
    return REGISTRY.get_sample_value(name, labels) or 0


async def post(socket, body, client_id):
    await socket.send_json_to(
        {"type": "message", "room": "lobby", "body": body, "client_id": client_id}
    )


async def test_past_the_soft_cap_typing_and_presence_are_shed_messages_kept(alice, bob):
    unread = Unread()
    reader = await connect(bob, unread)
    writer = await connect(alice)
    await frames(reader)
    await frames(writer)
    shed_typing = counted("voiceflow_socket_shed_total", type="typing")
    shed_presence = counted("voiceflow_socket_shed_total", type="presence")

    unread.bytes = SOFT + 1
    await writer.send_json_to({"type": "typing", "room": "lobby", "state": "start"})
    await writer.send_json_to({"type": "status", "status": "away"})
    await post(writer, "still delivered", "m1")
    got = await frames_through(reader, "message")
    got += await frames(reader)

    assert [f["type"] for f in got] == ["message"]
    assert got[0]["body"] == "still delivered"
    # Typing start, and the stop the message sent on alice's behalf.
    assert counted("voiceflow_socket_shed_total", type="typing") == shed_typing + 2
    assert counted("voiceflow_socket_shed_total", type="presence") > shed_presence

    unread.bytes = 0  # caught up: ephemeral events flow again
    await writer.send_json_to({"type": "status", "status": "online"})
    got = await frames_through(reader, "presence")
    assert got[-1] == {"type": "presence", "user": "alice", "status": "online"}
    await reader.disconnect()
    await writer.disconnect()


async def test_past_the_hard_cap_the_socket_closes_with_1013(alice, bob):
    unread = Unread()
    reader = await connect(bob, unread)
    writer = await connect(alice)
    await frames(reader)
    closed_before = counted("voiceflow_socket_overflow_closed_total")

    unread.bytes = HARD - 50  # the next message's frame does not fit
    await post(writer, "x" * 100, "m1")

    assert await reader.receive_output(timeout=5) == {
        "type": "websocket.close",
        "code": 1013,
    }
    assert counted("voiceflow_socket_overflow_closed_total") == closed_before + 1
    # The poster is not affected.
    assert "ack" in [f["type"] for f in await frames(writer)]
    await reader.disconnect()  # the client's side of the close
    await writer.disconnect()


async def test_a_broadcast_waiting_for_buffer_room_goes_out_once_there_is_room():
    # A write to a full buffer suspends on the server's flag; it must resume then
    # (not fail, which would drop the broadcast).
    flag = _Flag(asyncio.get_running_loop())

    async def send():
        await flag.wait()
        return "sent"

    writing = _start_eagerly(send())
    assert writing is not None
    await asyncio.sleep(0.01)
    flag.set()
    assert await asyncio.wait_for(writing, 1) == "sent"

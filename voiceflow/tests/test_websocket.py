"""The web process's WebSocket protocol: broadcast frames batched per loop turn."""

import asyncio
import contextlib
import gc
import weakref

import pytest
import uvicorn
import websockets
from websockets.frames import Frame, Opcode

from voiceflow.runtime.websocket import (
    FRAME_EXTENSION,
    OUTPUT_EXTENSION,
    RECEIVE_QUEUE_MAX,
    BatchingWebSocketProtocol,
    UpgradingHttpProtocol,
    text_frame,
)

from .servers import free_port


class App:
    """An ASGI app that accepts every socket and hands it to the test."""

    def __init__(self):
        self.sockets = asyncio.Queue()

    async def __call__(self, scope, receive, send):
        await receive()  # websocket.connect
        await send({"type": "websocket.accept"})
        closed = asyncio.get_running_loop().create_future()
        await self.sockets.put((scope["extensions"][FRAME_EXTENSION], send, closed))
        while (await receive())["type"] != "websocket.disconnect":
            pass
        closed.set_result(None)


class Recording(App):
    """App that also hands the test what each client sent: texts, then the close."""

    def __init__(self):
        super().__init__()
        self.received = asyncio.Queue()

    async def __call__(self, scope, receive, send):
        await receive()  # websocket.connect
        await send({"type": "websocket.accept"})
        closed = asyncio.get_running_loop().create_future()
        await self.sockets.put((scope["extensions"][FRAME_EXTENSION], send, closed))
        while (event := await receive())["type"] != "websocket.disconnect":
            await self.received.put(event["text"])
        await self.received.put(event["code"])
        closed.set_result(None)


@contextlib.asynccontextmanager
async def serving(app, http=UpgradingHttpProtocol, max_size=2**20):
    """`app` served by uvicorn with the web process's protocols: its URL."""
    port = free_port()
    config = uvicorn.Config(
        app,
        host="127.0.0.1",
        port=port,
        http=http,
        ws=BatchingWebSocketProtocol,
        ws_max_size=max_size,
        lifespan="off",
        log_level="warning",
    )
    server = uvicorn.Server(config)
    task = asyncio.ensure_future(server.serve())
    while not server.started:
        await asyncio.sleep(0.01)
    try:
        yield f"ws://127.0.0.1:{port}/"
    finally:
        server.should_exit = True
        await task


@pytest.fixture
async def served():
    app = App()
    async with serving(app) as url:
        yield app, url


async def opened(served):
    app, url = served
    client = await websockets.connect(url, max_size=2**20, compression=None)
    queue, send, closed = await app.sockets.get()
    return client, queue, send, closed


async def received(client, count):
    return [await asyncio.wait_for(client.recv(), 5) for _ in range(count)]


async def test_frames_queued_in_one_turn_arrive_whole_and_before_a_later_send(served):
    client, queue, send, _ = await opened(served)
    # Sizes for each length encoding: 7 bits, 16 bits, 64 bits.
    texts = [f"{n}:" + "é" * size for n, size in enumerate([0, 10, 125, 200, 70000])]

    assert all(queue(text_frame(text.encode())) for text in texts)
    await send({"type": "websocket.send", "text": "after"})

    assert await received(client, 6) == [*texts, "after"]
    await client.close()


async def test_frames_queued_in_one_turn_leave_in_one_write(served, monkeypatch):
    client, queue, _, _ = await opened(served)
    protocol = queue.__self__
    writes = []
    monkeypatch.setattr(protocol.transport, "write", writes.append, raising=False)

    for n in range(3):
        queue(text_frame(f"m{n}".encode()))
    await asyncio.sleep(0)  # the turn ends
    await asyncio.sleep(0)

    assert writes == [b"".join(text_frame(f"m{n}".encode()) for n in range(3))]
    monkeypatch.undo()
    await client.close()


async def test_a_client_frame_in_the_same_turn_does_not_drop_queued_frames(served):
    # uvicorn keeps the fragments of a message being received in `frames`; the queue
    # must not share its state with the receiving side.
    client, queue, _, _ = await opened(served)
    protocol = queue.__self__

    queue(text_frame(b"broadcast"))
    protocol.data_received(Frame(Opcode.TEXT, b"from the client").serialize(mask=True))

    assert await received(client, 1) == ["broadcast"]
    await client.close()


async def test_a_full_write_buffer_refuses_so_the_caller_waits_through_asgi(served):
    client, queue, _, _ = await opened(served)
    protocol = queue.__self__

    protocol.pause_writing()
    assert queue(text_frame(b"not now")) is False
    protocol.resume_writing()
    assert queue(text_frame(b"now")) is True

    assert await received(client, 1) == ["now"]
    await client.close()


async def test_a_send_waits_while_the_write_buffer_is_full_then_goes_out(served):
    client, queue, send, _ = await opened(served)
    protocol = queue.__self__

    protocol.pause_writing()
    waiting = asyncio.ensure_future(send({"type": "websocket.send", "text": "later"}))
    await asyncio.sleep(0.05)
    assert not waiting.done()
    protocol.resume_writing()
    await asyncio.wait_for(waiting, 5)

    assert await received(client, 1) == ["later"]
    await client.close()


async def test_a_close_sends_what_was_queued_first_and_refuses_what_comes_after(served):
    client, queue, send, _ = await opened(served)

    queue(text_frame(b"last words"))
    await send({"type": "websocket.close", "code": 4000})

    assert queue(text_frame(b"too late")) is False
    assert await received(client, 1) == ["last words"]
    with pytest.raises(websockets.ConnectionClosed) as closed:
        await client.recv()
    assert closed.value.rcvd.code == 4000


async def test_a_close_does_not_wait_behind_a_full_buffer(served):
    client, queue, send, _ = await opened(served)
    protocol = queue.__self__

    protocol.pause_writing()  # as when the client stopped reading
    waiting = asyncio.ensure_future(send({"type": "websocket.send", "text": "stuck"}))
    await asyncio.sleep(0.05)
    await asyncio.wait_for(send({"type": "websocket.close", "code": 1013}), 1)
    await asyncio.wait_for(waiting, 1)  # released and dropped, without an error

    with pytest.raises(websockets.ConnectionClosed) as closed:
        await client.recv()
    assert closed.value.rcvd.code == 1013


async def test_a_send_after_the_server_closed_the_socket_itself_is_dropped(served):
    client, queue, send, _ = await opened(served)
    protocol = queue.__self__

    protocol.keepalive_timeout()  # no pong in time: the server closes with 1011
    await send({"type": "websocket.send", "text": "too late"})  # no error: dropped
    await send({"type": "websocket.close", "code": 1000})

    with pytest.raises(websockets.ConnectionClosed) as closed:
        await client.recv()
    assert closed.value.rcvd.code == 1011


async def test_a_pong_behind_frames_the_app_has_not_taken_keeps_the_socket(served):
    client, queue, send, _ = await opened(served)
    protocol = queue.__self__
    protocol.ping_timeout = 0.05
    # The app is behind on the client's frames: reading pauses, and the pong to this
    # ping waits behind them.
    protocol.transport.pause_reading()
    protocol.read_paused = True
    protocol.send_keepalive_ping()
    await asyncio.sleep(0.3)  # several pong deadlines
    assert not protocol.close_sent

    protocol.read_paused = False  # the app caught up
    protocol.transport.resume_reading()
    await asyncio.sleep(0.3)
    assert protocol.pending_ping_payload is None  # the pong came
    await send({"type": "websocket.send", "text": "still open"})
    assert await received(client, 1) == ["still open"]
    await client.close()


async def test_a_turn_takes_64_kib_of_frames_then_refuses_so_the_caller_waits(served):
    client, queue, send, _ = await opened(served)
    text = "y" * 20_000

    assert [queue(text_frame(text.encode())) for _ in range(5)] == [True] * 4 + [False]
    await send({"type": "websocket.send", "text": "after"})  # as the caller would

    assert await received(client, 5) == [text] * 4 + ["after"]
    await client.close()


async def test_unread_output_counts_this_turns_frames_and_the_write_buffer(served):
    client, queue, _, _ = await opened(served)
    protocol = queue.__self__
    unread = protocol.scope["extensions"][OUTPUT_EXTENSION]
    frame = text_frame(b"x" * 1000)

    assert unread() == 0
    queue(frame)
    queue(frame)
    assert unread() == 2 * len(frame)
    assert await received(client, 2) == ["x" * 1000] * 2
    assert unread() == 0
    await client.close()


async def test_frames_for_a_client_that_left_are_dropped_quietly(served):
    client, queue, _, closed = await opened(served)
    await client.close()
    await asyncio.wait_for(closed, 5)

    assert queue(text_frame(b"nobody listens")) is False


async def test_the_handshake_is_not_kept_once_the_socket_is_open(served):
    client, queue, send, _ = await opened(served)
    protocol = queue.__self__

    assert protocol.request is None and protocol.response is None
    # websockets' parser holds on to the request; its headers are gone.
    assert len(protocol.conn.parser.gi_frame.f_locals["request"].headers) == 0
    await send({"type": "websocket.send", "text": "still open"})
    assert await received(client, 1) == ["still open"]
    await client.close()


async def test_a_socket_whose_write_fails_does_not_hold_up_the_others(
    served, monkeypatch
):
    broken, broken_queue, _, _ = await opened(served)
    client, queue, _, _ = await opened(served)

    def fail(data):
        raise RuntimeError("transport gone")

    monkeypatch.setattr(broken_queue.__self__.transport, "write", fail, raising=False)
    broken_queue(text_frame(b"lost"))
    queue(text_frame(b"delivered"))

    assert await received(client, 1) == ["delivered"]
    monkeypatch.undo()
    await client.close()
    await broken.close()


class NotedHttpProtocol(UpgradingHttpProtocol):
    """Notes (weakly) every HTTP protocol made, the upgraded ones included."""

    made = []

    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        self.made.append(weakref.ref(self))


async def test_a_closed_socket_is_freed_without_the_cycle_collector():
    # The server's collector thresholds make full collections minutes apart: what
    # only the collector frees piles up under connect/disconnect churn.
    app, sockets = App(), []
    NotedHttpProtocol.made.clear()
    loop = asyncio.get_running_loop()
    async with serving(app, http=NotedHttpProtocol) as url:
        gc.collect()
        gc.disable()
        try:
            for _ in range(10):
                client, queue, send, closed = await opened((app, url))
                sockets.append(weakref.ref(queue.__self__))
                await client.close()
                await asyncio.wait_for(closed, 5)
                del queue, send  # the test's own references
            deadline = loop.time() + 5
            while loop.time() < deadline and any(ref() for ref in sockets):
                await asyncio.sleep(0.05)

            assert [ref() for ref in sockets] == [None] * 10
            assert [ref() for ref in NotedHttpProtocol.made] == [None] * 10
        finally:
            gc.enable()


def client_frames(*frames):
    return b"".join(frame.serialize(mask=True) for frame in frames)


async def test_client_frames_arrive_whole_and_in_order_however_the_reads_cut_them():
    app = Recording()
    async with serving(app) as url:
        client, queue, _, _ = await opened((app, url))
        protocol = queue.__self__
        # Each length encoding, multi-byte characters, and frames websockets' own
        # parser takes (fragments, a ping) between those data_received takes.
        texts = ["a", "é" * 70, "x" * 125, "y" * 126, "z" * 70000, "", "abcd", "e"]
        stream = client_frames(
            *[Frame(Opcode.TEXT, text.encode()) for text in texts[:6]],
            Frame(Opcode.TEXT, b"ab", fin=False),
            Frame(Opcode.PING, b"p"),
            Frame(Opcode.CONT, b"cd"),
            Frame(Opcode.TEXT, b"e"),
        )
        for cut in (len(stream), 1, 7, 131, 4096):
            for start in range(0, len(stream), cut):
                protocol.data_received(stream[start : start + cut])
            got = [await asyncio.wait_for(app.received.get(), 5) for _ in texts]
            assert got == texts, f"reads of {cut} bytes"
        await client.close()


@pytest.mark.parametrize(
    "frame, code",
    [
        (Frame(Opcode.TEXT, b"ok \xff"), 1007),  # not UTF-8
        (Frame(Opcode.TEXT, b"x" * 1025), 1009),  # over the size limit
        # RSV1 set: an extension the handshake did not agree (mask of zeros).
        (b"\xc1\x81\x00\x00\x00\x00x", 1002),
    ],
)
async def test_a_bad_client_frame_closes_with_its_code_after_the_good_ones(frame, code):
    app = Recording()
    async with serving(app, max_size=1024) as url:
        client, queue, _, _ = await opened((app, url))
        protocol = queue.__self__
        good = Frame(Opcode.TEXT, b"fine")
        bad = frame if isinstance(frame, bytes) else client_frames(frame)
        protocol.data_received(client_frames(good) + bad + client_frames(good))
        assert await asyncio.wait_for(app.received.get(), 5) == "fine"
        with pytest.raises(websockets.ConnectionClosedError) as closed:
            await asyncio.wait_for(client.recv(), 5)
        assert closed.value.rcvd.code == code


async def test_an_unmasked_client_frame_closes_the_socket():
    app = Recording()
    async with serving(app) as url:
        client, queue, _, _ = await opened((app, url))
        queue.__self__.data_received(Frame(Opcode.TEXT, b"bare").serialize(mask=False))
        with pytest.raises(websockets.ConnectionClosedError) as closed:
            await asyncio.wait_for(client.recv(), 5)
        assert closed.value.rcvd.code == 1002
        # The app hears of the close, not of the frame.
        assert await asyncio.wait_for(app.received.get(), 5) == 1002


async def test_whole_text_frames_skip_websockets_parser(served, monkeypatch):
    # What keeps the receiving side cheap: if websockets' internals move, this says
    # so (every frame would still arrive, through its parser).
    client, queue, _, _ = await opened(served)
    protocol = queue.__self__
    parsed = []
    monkeypatch.setattr(protocol.conn, "receive_data", parsed.append)
    protocol.data_received(client_frames(*[Frame(Opcode.TEXT, b"m")] * 3))
    assert parsed == [] and len(protocol.queue.items) == 3
    monkeypatch.undo()
    await client.close()


async def test_reading_pauses_only_while_the_app_is_frames_behind(served):
    # A client at a normal pace never costs a pause and a resume of its reads; one
    # the app cannot keep up with is not read further until the app catches up.
    client, queue, _, _ = await opened(served)
    protocol = queue.__self__
    frame = client_frames(Frame(Opcode.TEXT, b"m"))
    for _ in range(RECEIVE_QUEUE_MAX - 1):
        protocol.data_received(frame)  # the app cannot run in between
    assert protocol.transport.is_reading()
    protocol.data_received(frame)
    assert not protocol.transport.is_reading()
    for _ in range(100):
        if protocol.queue.empty():
            break
        await asyncio.sleep(0.01)
    assert protocol.transport.is_reading()
    await client.close()

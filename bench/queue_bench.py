"""Queueing a broadcast frame on many sockets (a benchmark, not a test), one process.

    .venv/bin/python bench/queue_bench.py [--sockets 20,3000] [--deliveries 60000]

What the hub does for each member of a room: `SocketWriter.deliver` on the web
process's `BatchingWebSocketProtocol`, over real uvloop transports (socketpairs, the
peer ends drained). Each round queues one frame on every socket, then lets the loop
turn's flush write them. Prints ns per frame queued (the flush not included), for each
socket count: on a few sockets their objects stay in the CPU caches, on thousands
each frame finds them in memory, as in a server whose cores other processes share.
"""

import argparse
import asyncio
import os
import socket
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
os.environ.setdefault("DJANGO_SETTINGS_MODULE", "voiceflow.settings")
os.environ.setdefault("SECRET_KEY", "benchmark-only")

import django  # noqa: E402

django.setup()

import uvloop  # noqa: E402
from uvicorn.config import Config  # noqa: E402
from uvicorn.server import ServerState  # noqa: E402
from websockets.protocol import State  # noqa: E402

from chat.socket_writer import SocketWriter  # noqa: E402
from voiceflow.runtime.frames import prebuilt_frame  # noqa: E402
from voiceflow.runtime.websocket import (  # noqa: E402
    FRAME_EXTENSION,
    OUTPUT_EXTENSION,
    BatchingWebSocketProtocol,
)

BODY = '{"type":"message","id":1,"room":"lobby","seq":1,"user":"alice","body":"%s"}'


async def _app(scope, receive, send):
    pass


async def queue_ns(count: int, deliveries: int) -> float:
    """ns per frame queued on `count` open sockets, over about `deliveries` frames."""
    loop = asyncio.get_running_loop()
    config = Config(app=_app, ws="websockets-sansio")
    config.load()
    state = ServerState()
    writers, peers, transports = [], [], []
    for _ in range(count):
        ours, theirs = socket.socketpair()
        theirs.setblocking(False)
        peers.append(theirs)
        transport, protocol = await loop.create_connection(
            lambda: BatchingWebSocketProtocol(config, state, {}, loop), sock=ours
        )
        transports.append(transport)
        protocol.conn.state = State.OPEN  # as after the handshake
        extensions = {
            FRAME_EXTENSION: protocol.broadcast_queue,
            OUTPUT_EXTENSION: protocol.output_bytes,
        }
        writers.append(SocketWriter(None, extensions, 1 << 20, 1 << 22))
    frame = prebuilt_frame(BODY % ("x" * 100))
    rounds = max(3, deliveries // count)
    spent = 0
    for _ in range(rounds):
        start = time.perf_counter_ns()
        for writer in writers:
            writer.deliver("", frame, None)
        spent += time.perf_counter_ns() - start
        await asyncio.sleep(0)  # the turn's flush writes them
        for peer in peers:
            try:
                peer.recv(1 << 16)
            except BlockingIOError:
                pass
    for transport in transports:
        transport.close()
    for peer in peers:
        peer.close()
    return spent / (rounds * count)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sockets", default="20,3000", help="socket counts")
    parser.add_argument("--deliveries", type=int, default=60000)
    args = parser.parse_args()
    for count in (int(n) for n in args.sockets.split(",")):
        ns = uvloop.run(queue_ns(count, args.deliveries))
        print(f"{count:>6} sockets: {ns:7.0f} ns per frame queued")


if __name__ == "__main__":
    main()

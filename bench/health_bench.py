"""GET /health latency while N live sockets are connected to a running server.

    python bench/health_bench.py --url http://127.0.0.1:8000 --sockets 1000 --calls 1000

Registers users (at most 20 sockets each, the contract's per-user limit), opens the
sockets with tickets, joins each to a room, then times sequential /health calls over
one keep-alive connection and prints p50/p90/p99. Run the server with
VOICEFLOW_RATE_LIMIT_MULTIPLIER=1000 (tickets and connects are rate limited per IP) and
VOICEFLOW_FAST_PASSWORD_HASHER=1. Loopback servers only; it stops by itself.
"""

import argparse
import asyncio
import http.client
import json
import math
import statistics
import sys
import time
import urllib.error
import urllib.parse
import urllib.request

import websockets

PASSWORD = "Bench-Pass-4821"
PER_USER = 20


def api(base, path, data=None, token=None):
    headers = {"Content-Type": "application/json"}
    if token:
        headers["Authorization"] = f"Token {token}"
    body = json.dumps(data or {}).encode()
    request = urllib.request.Request(base + path, body, headers, method="POST")
    with urllib.request.urlopen(request, timeout=30) as response:
        return json.loads(response.read())


def register(base, username):
    try:
        return api(
            base, "/api/auth/register/", {"username": username, "password": PASSWORD}
        )["token"]
    except urllib.error.HTTPError as error:
        if error.code != 400:
            raise
        return api(
            base, "/api/auth/token/", {"username": username, "password": PASSWORD}
        )["token"]


async def open_socket(base, token, room):
    ticket = (await asyncio.to_thread(api, base, "/api/ws-ticket/", None, token))[
        "ticket"
    ]
    ws_url = base.replace("http", "ws", 1) + f"/ws/chat/?ticket={ticket}"
    socket = await websockets.connect(ws_url, open_timeout=30, ping_interval=None)
    assert json.loads(await socket.recv())["type"] == "hello"
    await socket.send(json.dumps({"type": "join", "room": room}))
    while json.loads(await socket.recv())["type"] != "joined":
        pass
    return socket


async def keep_alive(sockets, interval):
    """Ping like a client (the server closes silent sockets) and drain what arrives."""

    async def drain(socket):
        try:
            async for _ in socket:
                pass
        except websockets.ConnectionClosed:
            pass

    drains = [asyncio.create_task(drain(s)) for s in sockets]
    try:
        while True:
            await asyncio.sleep(interval)
            for socket in sockets:
                try:
                    await socket.send(json.dumps({"type": "ping", "ts": time.time()}))
                except websockets.ConnectionClosed:
                    pass
    finally:
        for task in drains:
            task.cancel()


def time_health(base, calls):
    """Latencies (ms) of sequential GET /health over one keep-alive connection."""
    parts = urllib.parse.urlsplit(base)
    conn = http.client.HTTPConnection(parts.hostname, parts.port, timeout=10)
    latencies, statuses, last = [], {}, None
    for _ in range(calls):
        started = time.perf_counter()
        conn.request("GET", "/health")
        response = conn.getresponse()
        raw = response.read()
        latencies.append((time.perf_counter() - started) * 1000)
        statuses[response.status] = statuses.get(response.status, 0) + 1
        last = raw
    conn.close()
    return latencies, statuses, json.loads(last)


def percentile(values, p):
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, math.ceil(p / 100 * len(ordered)) - 1)]


async def main(args):
    base = args.url.rstrip("/")
    host = urllib.parse.urlsplit(base).hostname
    if host not in ("127.0.0.1", "localhost", "::1"):
        sys.exit("health_bench only targets a server on this machine (loopback)")
    users = math.ceil(args.sockets / PER_USER)
    stamp = int(time.time())
    tokens = [
        await asyncio.to_thread(register, base, f"hb{stamp}-{i}") for i in range(users)
    ]
    baseline, _, _ = await asyncio.to_thread(time_health, base, min(args.calls, 200))
    print(f"/health with no bench sockets: p50 {percentile(baseline, 50):.2f} ms")

    started = time.perf_counter()
    sockets = []
    for start in range(0, args.sockets, args.batch):
        batch = range(start, min(start + args.batch, args.sockets))
        sockets += await asyncio.gather(
            *(open_socket(base, tokens[i // PER_USER], args.room) for i in batch)
        )
    print(
        f"{len(sockets)} sockets of {users} users joined in "
        f"{time.perf_counter() - started:.1f} s"
    )

    pinger = asyncio.create_task(keep_alive(sockets, args.ping_interval))
    latencies, statuses, last = await asyncio.to_thread(time_health, base, args.calls)
    pinger.cancel()
    await asyncio.gather(*(s.close() for s in sockets), return_exceptions=True)

    print(
        f"{args.calls} calls to /health with {len(sockets)} live sockets: "
        f"statuses {statuses}"
    )
    print(
        "latency ms: "
        f"p50 {percentile(latencies, 50):.2f}  p90 {percentile(latencies, 90):.2f}  "
        f"p99 {percentile(latencies, 99):.2f}  max {max(latencies):.2f}  "
        f"mean {statistics.fmean(latencies):.2f}"
    )
    figures = last["metrics"]["sockets"]
    print(
        f"server reported: connections {figures['connections']}, users "
        f"{figures['users']}, rooms {figures['rooms']}, rss "
        f"{figures['memoryUsage']['rss'] / 2**20:.0f} MiB"
    )


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--url", default="http://127.0.0.1:8000")
    parser.add_argument("--sockets", type=int, default=1000)
    parser.add_argument("--calls", type=int, default=1000)
    parser.add_argument("--room", default="lobby")
    parser.add_argument("--batch", type=int, default=50, help="sockets opened at once")
    parser.add_argument("--ping-interval", type=float, default=20)
    asyncio.run(main(parser.parse_args()))

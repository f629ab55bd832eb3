"""VoiceFlow's own load tool: fan-out, idle-socket, ticket and ping scenarios, any URL.

Authenticates like a real client: REST register (or token) -> POST /api/ws-ticket/ ->
ws://.../ws/chat/?ticket=... . Run the server with VOICEFLOW_RATE_LIMIT_MULTIPLIER=1000
(and VOICEFLOW_FAST_PASSWORD_HASHER=1 so registering many users is quick).

  python bench/load.py fanout --url http://127.0.0.1:8000 --rooms 10 --members 20 \
      --rate 100 --duration 10
  python bench/load.py fanout ... --rate 150 --server-pid <PID> [--profile]
  python bench/load.py idle --url http://127.0.0.1:8000 --sockets 10000 --users 1000 \
      --hold 20 --server-pid <PID>
  python bench/load.py tickets --url http://127.0.0.1:8000 --requests 2000 \
      --concurrency 16 --server-pid <PID>
  python bench/load.py pings --url http://127.0.0.1:8000 --sockets 10000 --users 1000 \
      --rooms 1000 --joins 1,10 --rate 400 --duration 30 --server-pid <PID>

Prints one block of figures; `--json` prints one JSON object instead.
"""

import argparse
import asyncio
import concurrent.futures
import http.client
import json
import os
import resource
import signal
import time
import urllib.error
import urllib.request
import uuid

import orjson
import websockets


def _post(base, path, payload=None, token=None):
    data = json.dumps(payload or {}).encode()
    request = urllib.request.Request(base + path, data=data, method="POST")
    request.add_header("Content-Type", "application/json")
    if token:
        request.add_header("Authorization", f"Token {token}")
    try:
        with urllib.request.urlopen(request, timeout=30) as response:
            return response.status, json.loads(response.read() or b"{}")
    except urllib.error.HTTPError as error:
        return error.code, error.read()[:200]


def user_token(base, username, password="load-Tool-pw-1"):
    """A token for `username`: registered on first use, logged in after."""
    status, body = _post(
        base, "/api/auth/register/", {"username": username, "password": password}
    )
    if status != 201:
        status, body = _post(
            base, "/api/auth/token/", {"username": username, "password": password}
        )
    if status != 200 and status != 201:
        raise SystemExit(f"cannot authenticate {username}: HTTP {status} {body!r}")
    return body["token"]


async def tokens_for(base, names, concurrency=16):
    gate = asyncio.Semaphore(concurrency)

    async def one(name):
        async with gate:
            return await asyncio.to_thread(user_token, base, name)

    return dict(zip(names, await asyncio.gather(*(one(n) for n in names))))


def rooms_create(base, token, slugs):
    for slug in slugs:
        status, body = _post(base, "/api/rooms/", {"name": slug, "slug": slug}, token)
        if status not in (201, 400):
            raise SystemExit(f"cannot create room {slug}: HTTP {status} {body!r}")


def pct(values, q):
    if not values:
        return float("nan")
    values = sorted(values)
    return values[min(len(values) - 1, int(round(q / 100 * (len(values) - 1))))]


class Socket:
    """One authenticated socket; frames are handed to `on_frame`."""

    deflate = False  # offer permessage-deflate, as browsers do

    def __init__(self, base, token):
        self.base, self.token = base, token
        self.ws = None
        self.closed_code = None

    async def open(self):
        status, body = await asyncio.to_thread(
            _post, self.base, "/api/ws-ticket/", None, self.token
        )
        if status != 200:
            raise RuntimeError(f"ws-ticket HTTP {status} {body!r}")
        url = self.base.replace("http", "ws", 1) + f"/ws/chat/?ticket={body['ticket']}"
        started = time.perf_counter()
        self.ws = await websockets.connect(
            url,
            max_size=2**20,
            compression="deflate" if self.deflate else None,
            ping_interval=None,
        )
        hello = orjson.loads(await self.ws.recv())
        if hello.get("type") != "hello":
            raise RuntimeError(f"expected hello, got {hello!r}")
        return (time.perf_counter() - started) * 1000

    async def send(self, frame):
        await self.ws.send(orjson.dumps(frame).decode())

    async def join(self, slug):
        await self.send({"type": "join", "room": slug})
        while True:
            frame = orjson.loads(await self.ws.recv())
            if frame.get("type") == "joined" and frame.get("room") == slug:
                return
            if frame.get("type") == "error":
                raise RuntimeError(f"join {slug} refused: {frame!r}")


def rss_bytes(pid, tree=True):
    """RSS of `pid` (and its descendants) from /proc."""
    pids, total = [pid], 0
    while pids:
        current = pids.pop()
        try:
            with open(f"/proc/{current}/statm") as f:
                total += int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")
            if tree:
                with open(f"/proc/{current}/task/{current}/children") as f:
                    pids.extend(int(p) for p in f.read().split())
        except OSError:
            pass
    return total


async def fanout(args):
    base, tag = args.url.rstrip("/"), args.prefix or uuid.uuid4().hex[:6]
    slugs = [f"lt-{tag}-{r}" for r in range(args.rooms)]
    names = {
        (r, m): f"lt{tag}r{r}m{m}"
        for r in range(args.rooms)
        for m in range(args.members)
    }
    tokens = await tokens_for(base, list(names.values()))
    rooms_create(base, tokens[names[(0, 0)]], slugs)
    sockets = {key: Socket(base, tokens[name]) for key, name in names.items()}
    gate = asyncio.Semaphore(32)

    async def open_join(key, sock):
        async with gate:
            await sock.open()
            await sock.join(slugs[key[0]])

    await asyncio.gather(*(open_join(k, s) for k, s in sockets.items()))
    received = {}  # (receiver, sender key, n) -> count
    latencies, ack_latencies, errors = [], [], []
    sent_at = {}  # client_id -> perf_counter
    acked = set()

    async def reader(key, sock):
        async for raw in sock.ws:
            frame = orjson.loads(raw)
            kind = frame.get("type")
            if kind == "message":
                cid = frame.get("client_id") or ""
                mark = (key, cid)
                received[mark] = received.get(mark, 0) + 1
                if received[mark] == 1 and cid in sent_at:
                    latencies.append((time.perf_counter() - sent_at[cid]) * 1000)
            elif kind == "ack":
                cid = frame["client_id"]
                acked.add(cid)
                ack_latencies.append((time.perf_counter() - sent_at[cid]) * 1000)
            elif kind == "error":
                errors.append(frame)

    readers = [asyncio.create_task(reader(k, s)) for k, s in sockets.items()]
    senders = [k for k in sockets if k[1] < args.senders]
    per_sender = args.rate / len(senders)
    body = "x" * 100

    async def sender(key):
        sock, n, start = sockets[key], 0, time.perf_counter()
        while (due := start + n / per_sender) < start + args.duration:
            await asyncio.sleep(max(0.0, due - time.perf_counter()))
            cid = f"{key[0]}.{key[1]}.{n}"
            sent_at[cid] = time.perf_counter()
            await sock.send(
                {
                    "type": "message",
                    "room": slugs[key[0]],
                    "body": body,
                    "client_id": cid,
                }
            )
            n += 1

    cpu_before = os.times()
    if args.server_pid:
        server_cpu = cpu_seconds(args.server_pid)
        if args.profile:  # bench/profile_server.py: profile the send window only
            os.kill(args.server_pid, signal.SIGUSR1)
    started = time.perf_counter()
    await asyncio.gather(*(sender(k) for k in senders))
    elapsed = time.perf_counter() - started
    if args.server_pid:
        server_cpu = cpu_seconds(args.server_pid) - server_cpu
        if args.profile:
            os.kill(args.server_pid, signal.SIGUSR2)
    await asyncio.sleep(args.drain)
    for task in readers:
        task.cancel()
    expected = {
        (r, m, cid)
        for cid in sent_at
        for r in range(args.rooms)
        for m in range(args.members)
        if cid.split(".")[0] == str(r)
    }
    got = {(k[0], k[1], cid) for (k, cid), count in received.items()}
    dups = sum(count - 1 for count in received.values() if count > 1)
    out = {
        "scenario": "fanout",
        "url": base,
        "rooms": args.rooms,
        "members": args.members,
        "senders": len(senders),
        "rate": args.rate,
        "offered": len(sent_at) / elapsed,
        "sent": len(sent_at),
        "acked": len(acked),
        "deliveries": len(got),
        "lost": len(expected - got),
        "dup": dups,
        "errors": len(errors),
        "p50_ms": pct(latencies, 50),
        "p99_ms": pct(latencies, 99),
        "ack_p50_ms": pct(ack_latencies, 50),
        "ack_p99_ms": pct(ack_latencies, 99),
        "loadgen_cpu_s": sum(os.times()[:2]) - sum(cpu_before[:2]),
    }
    if args.server_pid:
        out["server_rss_mb"] = rss_bytes(args.server_pid) / 2**20
        out["server_cpu_ms_per_msg"] = server_cpu * 1000 / max(1, len(sent_at))
    out["passed"] = (
        out["lost"] == 0
        and out["dup"] == 0
        and out["errors"] == 0
        and out["acked"] == out["sent"]
        and out["p99_ms"] < 250
    )
    for sock in sockets.values():
        await sock.ws.close()
    return out


async def idle(args):
    # Ticket requests are blocking urllib calls in threads: one per concurrent connect.
    pool = concurrent.futures.ThreadPoolExecutor(max_workers=args.concurrency)
    asyncio.get_running_loop().set_default_executor(pool)
    base, tag = args.url.rstrip("/"), args.prefix or uuid.uuid4().hex[:6]
    names = [f"li{tag}u{u}" for u in range(args.users)]
    tokens = await tokens_for(base, names)
    slugs = [f"li-{tag}-{r}" for r in range(args.rooms)]
    rooms_create(base, tokens[names[0]], slugs)
    baseline = rss_bytes(args.server_pid) if args.server_pid else 0
    sockets = [Socket(base, tokens[names[i % args.users]]) for i in range(args.sockets)]
    gate = asyncio.Semaphore(args.concurrency)
    connect_ms, failures, closed, pong_ms = [], [], [], []
    done = asyncio.Event()
    keepers = []

    async def keep(sock):
        """Ping every --ping-interval from the moment it is open (the server closes
        sockets silent for 60 s), until the hold is over."""
        try:
            while not done.is_set():
                sent = time.perf_counter()
                await sock.send({"type": "ping", "ts": sent})
                while True:
                    frame = orjson.loads(await asyncio.wait_for(sock.ws.recv(), 30))
                    if frame.get("type") == "pong":
                        pong_ms.append((time.perf_counter() - sent) * 1000)
                        break
                try:
                    await asyncio.wait_for(done.wait(), args.ping_interval)
                except TimeoutError:
                    pass
        except websockets.ConnectionClosed as error:
            closed.append(error.rcvd.code if error.rcvd else None)
        except Exception as error:
            failures.append(repr(error)[:120])

    async def open_one(i, sock):
        async with gate:
            try:
                connect_ms.append(await sock.open())
                await sock.join(slugs[i % args.rooms])
            except Exception as error:  # counted, reported: the figure is how many fail
                failures.append(repr(error)[:120])
                return
        keepers.append(asyncio.create_task(keep(sock)))

    started = time.perf_counter()
    cpu_before = cpu_seconds(args.server_pid) if args.server_pid else 0.0
    await asyncio.gather(*(open_one(i, s) for i, s in enumerate(sockets)))
    open_s = time.perf_counter() - started
    # Ticket, handshake, hello and join of every socket (pings of the early ones too).
    open_cpu = cpu_seconds(args.server_pid) - cpu_before if args.server_pid else 0.0
    live = [s for s in sockets if s.ws is not None]
    await asyncio.sleep(1)
    full = rss_bytes(args.server_pid) if args.server_pid else 0
    await asyncio.sleep(max(0.0, args.hold - 1))
    done.set()
    await asyncio.gather(*keepers)
    out = {
        "scenario": "idle",
        "url": base,
        "sockets": args.sockets,
        "users": args.users,
        "open": len(live),
        "open_s": open_s,
        "failures": len(failures),
        "first_failure": failures[0] if failures else None,
        "closed_by_server": closed,
        "connect_p50_ms": pct(connect_ms, 50),
        "connect_p99_ms": pct(connect_ms, 99),
        "pong_p50_ms": pct(pong_ms, 50),
        "pong_p99_ms": pct(pong_ms, 99),
    }
    if args.server_pid:
        out["server_rss_mb"] = full / 2**20
        out["kb_per_socket"] = (full - baseline) / 1024 / max(1, len(live))
        out["server_cpu_ms_per_connect"] = open_cpu * 1000 / max(1, len(live))
    for sock in live:
        await sock.ws.close()
    return out


class PingSocket(Socket):
    """A socket whose one reader task answers joins and counts pongs."""

    def __init__(self, base, token, stats):
        super().__init__(base, token)
        self.stats = stats
        self.joining = {}  # slug -> future set by its `joined`
        self.reader = None

    def start(self):
        self.reader = asyncio.create_task(self._read())

    async def _read(self):
        stats = self.stats
        try:
            async for raw in self.ws:
                frame = orjson.loads(raw)
                kind = frame.get("type")
                if kind == "pong":
                    ts = frame.get("ts")
                    if isinstance(ts, (int, float)) and ts >= stats["window_ts"]:
                        stats["pongs"] += 1
                        stats["pong_ms"].append(time.perf_counter() * 1000 - ts)
                        stats["with_last_seq"] += bool(frame.get("last_seq"))
                elif kind == "joined" and frame.get("room") in self.joining:
                    self.joining.pop(frame["room"]).set_result(None)
                elif kind == "error" and frame.get("request") == "join":
                    for future in self.joining.values():
                        future.set_exception(RuntimeError(f"join refused: {frame!r}"))
                    self.joining.clear()
        except websockets.ConnectionClosed as error:
            stats["closed"].append(error.rcvd.code if error.rcvd else None)

    async def join(self, slug):
        self.joining[slug] = asyncio.get_running_loop().create_future()
        await self.send({"type": "join", "room": slug})
        await asyncio.wait_for(self.joining[slug], 60)

    async def ping(self):
        try:
            await self.send({"type": "ping", "ts": time.perf_counter() * 1000})
        except websockets.ConnectionClosed:
            pass  # counted by the reader


async def pings(args):
    """Server CPU per 1,000 pings, with every socket in 1 room, then in more.

    --joins 1,10: open --sockets sockets, each user's sockets in the same rooms; join 1
    room each and measure; then join up to 10 each and measure again. Each measurement:
    --idle seconds without pings (the server's idle CPU), then --duration seconds of
    pings at --rate per second over all sockets, round robin. Between measurements a
    keepalive pings every socket every 15 s (the server closes sockets silent 60 s).
    """
    pool = concurrent.futures.ThreadPoolExecutor(max_workers=args.concurrency)
    asyncio.get_running_loop().set_default_executor(pool)
    base, tag = args.url.rstrip("/"), args.prefix or uuid.uuid4().hex[:6]
    steps = [int(n) for n in args.joins.split(",")]
    names = [f"lp{tag}u{u}" for u in range(args.users)]
    tokens = await tokens_for(base, names)
    slugs = [f"lp-{tag}-{r}" for r in range(args.rooms)]
    rooms_create(base, tokens[names[0]], slugs)
    stats = {"window_ts": float("inf"), "pongs": 0, "pong_ms": [], "with_last_seq": 0}
    stats["closed"] = []
    sockets = [
        PingSocket(base, tokens[names[i % args.users]], stats)
        for i in range(args.sockets)
    ]
    gate = asyncio.Semaphore(args.concurrency)
    failures = []
    quiet = asyncio.Event()  # set: the keepalive pauses (a measurement runs)

    def rooms_of(i, count):
        user = i % args.users
        return [slugs[(user * steps[-1] + k) % args.rooms] for k in range(count)]

    async def open_join(i, sock, have, want):
        async with gate:
            try:
                if sock.ws is None:
                    await sock.open()
                    sock.start()
                for slug in rooms_of(i, want)[have:]:
                    await sock.join(slug)
            except Exception as error:  # counted, reported
                failures.append(repr(error)[:120])

    async def keepalive():
        while True:
            live = [s for s in sockets if s.ws is not None and s.reader]
            for sock in live:
                if quiet.is_set():
                    break
                await sock.ping()
                await asyncio.sleep(15 / max(1, len(live)))
            if quiet.is_set() or not live:
                await asyncio.sleep(0.5)

    keeper = asyncio.create_task(keepalive())
    results, have = [], 0
    for want in steps:
        started = time.perf_counter()
        await asyncio.gather(
            *(open_join(i, s, have, want) for i, s in enumerate(sockets))
        )
        setup_s, have = time.perf_counter() - started, want
        live = [s for s in sockets if s.ws is not None and not s.reader.done()]
        for window in range(1, args.repeat + 1):
            quiet.set()
            await asyncio.sleep(1)  # the keepalive's last pongs
            idle_rate = await _cpu_rate(args.server_pid, args.idle)
            stats.update(window_ts=time.perf_counter() * 1000, pongs=0)
            stats.update(with_last_seq=0, pong_ms=[])
            total = int(args.rate * args.duration)
            cpu = cpu_seconds(args.server_pid)
            started = time.perf_counter()
            for n in range(total):
                delay = started + n / args.rate - time.perf_counter()
                if delay > 0:
                    await asyncio.sleep(delay)
                await live[n % len(live)].ping()
            deadline = time.perf_counter() + 10
            while stats["pongs"] < total and time.perf_counter() < deadline:
                await asyncio.sleep(0.01)
            elapsed = time.perf_counter() - started
            used = cpu_seconds(args.server_pid) - cpu
            net = used - idle_rate * elapsed
            quiet.clear()
            results.append(
                {
                    "rooms_per_socket": want,
                    "window": window,
                    "sockets_open": len(live),
                    "setup_s": setup_s,
                    "failures": len(failures),
                    "first_failure": failures[0] if failures else None,
                    "closed_by_server": len(stats["closed"]),
                    "pings": total,
                    "pongs": stats["pongs"],
                    "pongs_with_last_seq": stats["with_last_seq"],
                    "rate_per_s": total / elapsed,
                    "pong_p50_ms": pct(stats["pong_ms"], 50),
                    "pong_p99_ms": pct(stats["pong_ms"], 99),
                    "server_idle_cpu_s_per_s": idle_rate,
                    "server_cpu_s": used,
                    "server_cpu_s_per_1000_pings": used * 1000 / total,
                    "net_cpu_s_per_1000_pings": net * 1000 / total,
                }
            )
            if window < args.repeat:
                await asyncio.sleep(args.idle)  # the keepalive reaches every socket
    keeper.cancel()
    for sock in sockets:
        if sock.ws is not None:
            await sock.ws.close()
    return {"scenario": "pings", "url": base, "sockets": args.sockets, "steps": results}


async def _cpu_rate(pid, seconds):
    """Server CPU seconds per second over the next `seconds`."""
    cpu = cpu_seconds(pid)
    await asyncio.sleep(seconds)
    return (cpu_seconds(pid) - cpu) / seconds


def cpu_seconds(pid):
    """User + system CPU seconds of a process so far (Linux /proc)."""
    with open(f"/proc/{pid}/stat") as stat:
        fields = stat.read().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def ticket_requests(base, token, count):
    """`count` POST /api/ws-ticket/ on one keep-alive connection; their latencies."""
    host, port = base.split("//", 1)[1].split(":")
    conn = http.client.HTTPConnection(host, int(port), timeout=30)
    headers = {"Authorization": f"Token {token}", "Content-Type": "application/json"}
    latencies = []
    for _ in range(count):
        started = time.perf_counter()
        conn.request("POST", "/api/ws-ticket/", b"{}", headers)
        response = conn.getresponse()
        body = response.read()
        if response.status != 200:
            raise RuntimeError(f"ws-ticket HTTP {response.status} {body[:200]!r}")
        latencies.append((time.perf_counter() - started) * 1000)
    conn.close()
    return latencies


async def tickets(args):
    """Ticket requests alone (every reconnect makes one): rate, latency, server CPU."""
    base = args.url.rstrip("/")
    prefix = args.prefix or uuid.uuid4().hex[:6]
    names = [f"tk{prefix}{n}" for n in range(args.concurrency)]
    tokens = await tokens_for(base, names)
    each = max(1, args.requests // args.concurrency)
    cpu_before = cpu_seconds(args.server_pid) if args.server_pid else 0.0
    started = time.perf_counter()
    runs = await asyncio.gather(
        *(asyncio.to_thread(ticket_requests, base, tokens[n], each) for n in names)
    )
    elapsed = time.perf_counter() - started
    latencies = [ms for run in runs for ms in run]
    out = {
        "scenario": "tickets",
        "url": base,
        "requests": len(latencies),
        "concurrency": args.concurrency,
        "per_second": len(latencies) / elapsed,
        "p50_ms": pct(latencies, 50),
        "p99_ms": pct(latencies, 99),
    }
    if args.server_pid:
        cpu = cpu_seconds(args.server_pid) - cpu_before
        out["server_cpu_ms_per_request"] = cpu * 1000 / len(latencies)
    return out


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    sub = parser.add_subparsers(dest="scenario", required=True)
    for name in ("fanout", "idle", "tickets", "pings"):
        p = sub.add_parser(name)
        p.add_argument("--url", default="http://127.0.0.1:8000")
        p.add_argument("--server-pid", type=int)
        p.add_argument("--prefix", help="user/room name tag (default: random)")
        p.add_argument("--json", action="store_true")
        p.add_argument(
            "--deflate", action="store_true", help="offer permessage-deflate"
        )
    f = sub.choices["fanout"]
    f.add_argument("--rooms", type=int, default=10)
    f.add_argument("--members", type=int, default=20)
    f.add_argument("--senders", type=int, default=2)
    f.add_argument("--rate", type=float, default=30, help="messages/s, all senders")
    f.add_argument("--duration", type=float, default=10)
    f.add_argument("--drain", type=float, default=3)
    f.add_argument(
        "--profile",
        action="store_true",
        help="signal a bench/profile_server.py server to profile the send window",
    )
    i = sub.choices["idle"]
    i.add_argument("--sockets", type=int, default=1000)
    i.add_argument("--users", type=int, default=100, help="max 20 sockets per user")
    i.add_argument("--rooms", type=int, default=10)
    i.add_argument("--concurrency", type=int, default=64)
    i.add_argument("--hold", type=float, default=20)
    i.add_argument("--ping-interval", type=float, default=25)
    t = sub.choices["tickets"]
    t.add_argument("--requests", type=int, default=2000)
    t.add_argument("--concurrency", type=int, default=16, help="clients (threads)")
    g = sub.choices["pings"]
    g.add_argument("--sockets", type=int, default=1000)
    g.add_argument("--users", type=int, default=100, help="max 20 sockets per user")
    g.add_argument("--rooms", type=int, default=1000)
    g.add_argument("--joins", default="1,10", help="rooms per socket, step by step")
    g.add_argument("--rate", type=float, default=400, help="pings/s, all sockets")
    g.add_argument("--duration", type=float, default=30)
    g.add_argument("--idle", type=float, default=8)
    g.add_argument("--repeat", type=int, default=1, help="measurements per step")
    g.add_argument("--concurrency", type=int, default=64)
    args = parser.parse_args()
    if args.scenario == "pings" and not args.server_pid:
        parser.error("pings measures server CPU: --server-pid is required")
    Socket.deflate = args.deflate
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))
    try:
        import uvloop

        uvloop.install()
    except ImportError:
        pass
    scenario = {"fanout": fanout, "idle": idle, "tickets": tickets, "pings": pings}[
        args.scenario
    ]
    out = asyncio.run(scenario(args))
    if args.json:
        print(json.dumps(out))
    elif "steps" in out:
        for block in [out] + out.pop("steps"):
            for key, value in block.items():
                shown = f"{value:.4g}" if isinstance(value, float) else value
                print(f"{key:>28}: {shown}")
            print()
    else:
        for key, value in out.items():
            print(
                f"{key:>18}: {value:.2f}"
                if isinstance(value, float)
                else f"{key:>18}: {value}"
            )


if __name__ == "__main__":
    main()

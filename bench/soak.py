"""Soak: steady churn against one server process, then quiet; does memory come back?

Users connect, join rooms, type, post, reload (disconnect, reconnect, join with
`since`), leave and disconnect at a steady rate for --minutes, after a warm-up and
its quiet period (the baseline). Every --sample seconds it reads the server's RSS
(/proc/PID/status VmRSS, else /health's memoryUsage.rss) and the sizes of its
per-socket, per-user and per-room structures (/health's `sockets.structures`), and
prints a row. After the churn, all sockets close and it samples through --quiet
seconds, then prints a verdict: did every structure return to its baseline size,
and RSS to near its baseline? Loopback only; bounded in sockets, count and time.

Run the server with VOICEFLOW_RATE_LIMIT_MULTIPLIER=1000 and
VOICEFLOW_FAST_PASSWORD_HASHER=1, or let the script start the Procfile's web
process (--start, with this environment):

  python bench/soak.py --url http://127.0.0.1:8000 --server-pid <PID> --minutes 30
  python bench/soak.py --start --minutes 3 --connects 20 --messages 50
"""

import argparse
import asyncio
import json
import os
import random
import re
import signal
import socket
import subprocess
import sys
import time
import urllib.request
import uuid
from pathlib import Path

import orjson
import websockets

from load import _post, rooms_create, tokens_for

ROOT = Path(__file__).resolve().parents[1]

# Entries that end with the clock (rate-limit windows, tickets, when presence events
# last went out), not when their user leaves.
TIMED = {"rateLimitKeys", "tickets", "presenceEventKeys"}


def health(base):
    with urllib.request.urlopen(base + "/health", timeout=10) as response:
        return json.loads(response.read())


def vm_rss(pid):
    with open(f"/proc/{pid}/status") as status:
        match = re.search(r"^VmRSS:\s+(\d+) kB", status.read(), re.MULTILINE)
    return int(match.group(1)) * 1024


class Server:
    """The Procfile's web line on a free loopback port, with this environment."""

    def __init__(self, port=None):
        if port is None:
            with socket.socket() as sock:
                sock.bind(("127.0.0.1", 0))
                port = sock.getsockname()[1]
        self.base = f"http://127.0.0.1:{port}"
        line = re.search(r"^web:\s*(.+)$", (ROOT / "Procfile").read_text(), re.M)
        env = {**os.environ, "HOST": "127.0.0.1", "PORT": str(port)}
        env["PATH"] = f"{Path(sys.executable).parent}{os.pathsep}{env['PATH']}"
        self.log = open(f"/tmp/voiceflow-soak-{port}.log", "wb")
        self.process = subprocess.Popen(
            ["bash", "-c", f"exec {line.group(1)}"],
            cwd=ROOT,
            env=env,
            stdout=self.log,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
        self.pid = self.process.pid

    def wait(self, timeout=30):
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                raise SystemExit(f"server exited at start (log: {self.log.name})")
            try:
                health(self.base)
                return
            except OSError:
                time.sleep(0.2)
        raise SystemExit(f"server did not answer within {timeout} s")

    def stop(self):
        if self.process.poll() is None:
            self.process.send_signal(signal.SIGTERM)
            try:
                self.process.wait(20)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait()
        self.log.close()


class Session:
    """One browser tab: a socket, its rooms and the last seq seen in each."""

    def __init__(self, churn, token):
        self.churn, self.token = churn, token
        self.ws = None
        self.rooms = {}  # slug -> last seq seen
        self.joined = {}  # slug -> Event set by the reader
        self.reader = None

    async def open(self, since=None):
        churn = self.churn
        status, body = await asyncio.to_thread(
            _post, churn.base, "/api/ws-ticket/", None, self.token
        )
        if status != 200:
            raise RuntimeError(f"ws-ticket HTTP {status}")
        url = churn.base.replace("http", "ws", 1) + f"/ws/chat/?ticket={body['ticket']}"
        self.ws = await asyncio.wait_for(
            websockets.connect(url, max_size=2**20, ping_interval=None), 10
        )
        hello = orjson.loads(await asyncio.wait_for(self.ws.recv(), 10))
        if hello.get("type") != "hello":
            raise RuntimeError(f"expected hello, got {hello.get('type')}")
        churn.counts["connects"] += 1
        self.reader = asyncio.ensure_future(self._read())
        for slug, seq in (since or {}).items():
            await self.join(slug, seq)

    async def _read(self):
        churn = self.churn
        try:
            async for raw in self.ws:
                frame = orjson.loads(raw)
                kind = frame.get("type")
                if kind == "message":
                    churn.counts["received"] += 1
                    slug = frame["room"]
                    if slug in self.rooms:
                        self.rooms[slug] = max(self.rooms[slug], frame["seq"])
                elif kind == "joined":
                    slug = frame["room"]
                    seqs = [m["seq"] for m in frame["missed"]] + [frame["last_seq"]]
                    self.rooms[slug] = max(seqs)
                    churn.counts["missed"] += len(frame["missed"])
                    if slug in self.joined:
                        self.joined[slug].set()
                elif kind == "ack":
                    churn.counts["acks"] += 1
                elif kind == "error":
                    churn.counts["errors"] += 1
        except websockets.ConnectionClosed as closed:
            code = closed.rcvd.code if closed.rcvd else None
            if code not in (None, 1000):
                churn.closes[code] = churn.closes.get(code, 0) + 1

    async def send(self, frame):
        await self.ws.send(orjson.dumps(frame).decode())

    async def join(self, slug, since=None):
        frame = {"type": "join", "room": slug}
        if since is not None:
            frame["since"] = since
        self.joined[slug] = asyncio.Event()
        await self.send(frame)
        await asyncio.wait_for(self.joined[slug].wait(), 10)
        self.churn.counts["joins"] += 1

    async def leave(self, slug):
        self.rooms.pop(slug, None)
        await self.send({"type": "leave", "room": slug})

    async def close(self):
        if self.ws is not None:
            await self.ws.close()
        if self.reader is not None:
            await asyncio.wait([self.reader], timeout=5)
            self.reader.cancel()


class Churn:
    """Sessions started at --connects per second, messages at --messages per second."""

    def __init__(self, base, args, tokens, slugs):
        self.base, self.args, self.tokens, self.slugs = base, args, tokens, slugs
        self.live = set()
        self.tasks = set()
        self.counts = dict.fromkeys(
            (
                "sessions", "connects", "joins", "reloads", "leaves", "posts",
                "typing", "acks", "received", "missed", "errors", "failures",
            ),
            0,
        )
        self.closes = {}

    async def session(self):
        args = self.args
        session = Session(self, random.choice(self.tokens))
        try:
            await session.open()
            for slug in random.sample(self.slugs, random.randint(1, 2)):
                await session.join(slug)
            self.live.add(session)
            lifetime = random.uniform(0.2, 1.8) * args.lifetime
            if random.random() < args.reloads:
                await asyncio.sleep(lifetime / 2)
                self.live.discard(session)
                since = dict(session.rooms)
                await session.close()
                session.rooms.clear()
                await session.open(since)  # a reload: the page asks what it missed
                self.counts["reloads"] += 1
                self.live.add(session)
                lifetime /= 2
            await asyncio.sleep(lifetime)
            self.live.discard(session)
            if session.rooms and random.random() < 0.5:
                await session.leave(random.choice(list(session.rooms)))
                self.counts["leaves"] += 1
        except Exception:
            self.counts["failures"] += 1
        finally:
            self.live.discard(session)
            await session.close()

    def spawn(self, coro):
        task = asyncio.ensure_future(coro)
        self.tasks.add(task)
        task.add_done_callback(self.tasks.discard)

    async def connects(self, seconds):
        started = time.monotonic()
        n = 0
        while (due := started + n / self.args.connects) < started + seconds:
            await asyncio.sleep(max(0.0, due - time.monotonic()))
            n += 1
            if len(self.tasks) < self.args.max_sockets:
                self.counts["sessions"] += 1
                self.spawn(self.session())

    async def messages(self, seconds):
        started = time.monotonic()
        n = 0
        while (due := started + n / self.args.messages) < started + seconds:
            await asyncio.sleep(max(0.0, due - time.monotonic()))
            n += 1
            candidates = [s for s in self.live if s.rooms]
            if not candidates:
                continue
            session = random.choice(candidates)
            slug = random.choice(list(session.rooms))
            try:
                if random.random() < 0.3:
                    await session.send({"type": "typing", "room": slug, "state": "start"})
                    self.counts["typing"] += 1
                await session.send(
                    {
                        "type": "message",
                        "room": slug,
                        "body": "soak " + "x" * random.randint(10, 200),
                        "client_id": uuid.uuid4().hex,
                    }
                )
                self.counts["posts"] += 1
            except websockets.ConnectionClosed:
                pass

    async def run(self, seconds):
        await asyncio.gather(self.connects(seconds), self.messages(seconds))
        # Sessions still open end now (a bounded wait: each has timeouts).
        if self.tasks:
            await asyncio.wait(list(self.tasks), timeout=3 * self.args.lifetime + 30)
        for task in list(self.tasks):
            task.cancel()


class Sampler:
    """Rows of (time, phase, RSS, sockets, unread output, every structure's size)."""

    def __init__(self, base, pid, out):
        self.base, self.pid, self.out = base, pid, out
        self.rows = []
        self.names = None
        self.started = time.monotonic()

    def sample(self, phase):
        body = health(self.base)["metrics"]["sockets"]
        rss = vm_rss(self.pid) if self.pid else body["memoryUsage"]["rss"]
        sizes = body.get("structures", {})
        sizes = {"typingDebounces": body.get("typingDebounces", 0), **sizes}
        row = {
            "t": time.monotonic() - self.started,
            "phase": phase,
            "rss": rss,
            "connections": body["connections"],
            "outputBytes": body.get("outputBytes", 0),
            "sizes": sizes,
        }
        if self.names is None:
            self.names = list(sizes)
            self._print_header()
        self.rows.append(row)
        cells = [
            f"{row['t']:7.0f}",
            f"{phase:>7}",
            f"{rss / 2**20:8.1f}",
            f"{row['connections']:6}",
            f"{row['outputBytes']:8}",
        ]
        cells += [f"{sizes.get(name, 0):>{self._width(name)}}" for name in self.names]
        print(" ".join(cells), file=self.out, flush=True)
        return row

    def _width(self, name):
        return max(6, len(self._short(name)))

    @staticmethod
    def _short(name):
        return name[:12]

    def _print_header(self):
        heads = [f"{'t_s':>7}", f"{'phase':>7}", f"{'rss_MiB':>8}", f"{'socks':>6}"]
        heads.append(f"{'unread':>8}")
        heads += [f"{self._short(n):>{self._width(n)}}" for n in self.names]
        print(" ".join(heads), file=self.out, flush=True)

    async def every(self, seconds, phase, stop):
        while not stop.is_set():
            try:
                await asyncio.to_thread(self.sample, phase)
            except OSError as error:
                print(f"# sample failed: {error!r}", file=self.out, flush=True)
            try:
                await asyncio.wait_for(stop.wait(), seconds)
            except TimeoutError:
                pass


def verdict(baseline, rows, args):
    """(passed, lines): every structure back at its baseline, RSS near it."""
    end = rows[-1]
    lines, passed = [], True
    for name, base_size in baseline["sizes"].items():
        size = end["sizes"].get(name, 0)
        peak = max(r["sizes"].get(name, 0) for r in rows)
        if size == base_size:
            state = "back to baseline"
        elif name in TIMED:
            state = "not yet (expires with its window)"
        else:
            state = "NOT back"
            passed = False
        lines.append(
            f"{name:>20}: baseline {base_size}, peak {peak}, end {size}: {state}"
        )
    rss0, rss1 = baseline["rss"], end["rss"]
    peak = max(r["rss"] for r in rows)
    allowed = rss0 * args.rss_tolerance / 100
    rss_ok = rss1 - rss0 <= allowed
    passed = passed and rss_ok
    lines.append(
        f"{'rss':>20}: baseline {rss0 / 2**20:.1f} MiB, peak {peak / 2**20:.1f}, end "
        f"{rss1 / 2**20:.1f} ({(rss1 - rss0) / 2**20:+.1f}; allowed "
        f"+{allowed / 2**20:.1f}): {'back to baseline' if rss_ok else 'NOT back'}"
    )
    churn = [r for r in rows if r["phase"] == "churn"]
    if len(churn) >= 4:
        # Growth over the churn's second half: a leak keeps climbing at steady load.
        half = churn[len(churn) // 2 :]
        minutes = max(1e-9, (half[-1]["t"] - half[0]["t"]) / 60)
        slope = (half[-1]["rss"] - half[0]["rss"]) / 2**20 / minutes
        lines.append(f"{'rss slope':>20}: {slope:+.2f} MiB/min over the churn's 2nd half")
    return passed, lines


async def soak(args, out):
    server = None
    if args.start:
        server = Server(args.port)
        await asyncio.to_thread(server.wait)
        base, pid = server.base, server.pid
    else:
        base, pid = args.url.rstrip("/"), args.server_pid
    if not re.match(r"^http://(127\.\d+\.\d+\.\d+|localhost|\[::1\])(:\d+)?$", base):
        raise SystemExit("loopback only: --url must be http://127.x.x.x:PORT")
    try:
        return await _soak(args, out, base, pid)
    finally:
        if server is not None:
            server.stop()


async def _soak(args, out, base, pid):
    tag = args.prefix or uuid.uuid4().hex[:6]
    names = [f"sk{tag}u{n}" for n in range(args.users)]
    tokens = await tokens_for(base, names)
    slugs = [f"sk-{tag}-{n}" for n in range(args.rooms)]
    await asyncio.to_thread(rooms_create, base, tokens[names[0]], slugs)
    print(
        f"# soak {base} pid={pid or '-'}: {args.minutes} min churn at "
        f"{args.connects} connects/s, {args.messages} msgs/s, {args.users} users, "
        f"{args.rooms} rooms; warm-up {args.warmup} s, quiet {args.quiet} s, "
        f"sample every {args.sample} s",
        file=out,
        flush=True,
    )
    sampler = Sampler(base, pid, out)
    tokens = list(tokens.values())

    async def phase(name, seconds, churning):
        stop = asyncio.Event()
        sampling = asyncio.ensure_future(sampler.every(args.sample, name, stop))
        churn = None
        if churning:
            churn = Churn(base, args, tokens, slugs)
            await churn.run(seconds)
        else:
            await asyncio.sleep(seconds)
        stop.set()
        await sampling
        return churn

    if args.warmup:
        await phase("warmup", args.warmup, True)
        await phase("settle", args.quiet, False)
    baseline = await asyncio.to_thread(sampler.sample, "base")
    churn = await phase("churn", args.minutes * 60, True)
    await phase("quiet", args.quiet, False)
    await asyncio.to_thread(sampler.sample, "end")
    rows = sampler.rows[sampler.rows.index(baseline) :]
    passed, lines = verdict(baseline, rows, args)
    print("# churn: " + ", ".join(f"{k} {v}" for k, v in churn.counts.items()), file=out)
    print(f"# closes by the server (code: count): {churn.closes or 'none'}", file=out)
    print("# verdict:", file=out)
    for line in lines:
        print("#   " + line, file=out)
    print(f"# {'PASS' if passed else 'FAIL'}", file=out, flush=True)
    return passed


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--url", default="http://127.0.0.1:8000")
    parser.add_argument("--server-pid", type=int, help="read RSS from /proc")
    parser.add_argument(
        "--start", action="store_true", help="start the Procfile's web process"
    )
    parser.add_argument("--port", type=int, help="with --start (default: a free one)")
    parser.add_argument("--minutes", type=float, default=30)
    parser.add_argument("--connects", type=float, default=20, help="sessions/s")
    parser.add_argument("--messages", type=float, default=50, help="posts/s")
    parser.add_argument("--lifetime", type=float, default=5, help="mean session s")
    parser.add_argument("--reloads", type=float, default=0.3, help="share reloading")
    parser.add_argument("--users", type=int, default=300)
    parser.add_argument("--rooms", type=int, default=100)
    parser.add_argument("--max-sockets", type=int, default=500)
    parser.add_argument("--sample", type=float, default=30, help="seconds")
    parser.add_argument("--warmup", type=float, default=60, help="seconds (0: none)")
    parser.add_argument(
        "--quiet", type=float, default=90, help="seconds after churn (> the grace)"
    )
    parser.add_argument(
        "--rss-tolerance", type=float, default=10, help="%% above baseline allowed"
    )
    parser.add_argument("--prefix", help="user/room name tag (default: random)")
    args = parser.parse_args()
    try:
        import uvloop

        uvloop.install()
    except ImportError:
        pass
    passed = asyncio.run(soak(args, sys.stdout))
    sys.exit(0 if passed else 1)


if __name__ == "__main__":
    main()

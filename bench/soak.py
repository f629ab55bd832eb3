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

Leak or allocator? --memory-debug DIR has the server (started with
VOICEFLOW_MEMORY_DEBUG_DIR=DIR, which --start sets) write a memory report on SIGUSR2
at every sample: the rows gain its anonymous RSS, Python's share (tracemalloc's
traced bytes with --tracemalloc, else pymalloc's bytes in objects), pymalloc's arenas,
glibc malloc's bytes in use and held free, and the collector's object count. At the
baseline, mid-churn, the churn's end and after the quiet it also counts live objects
by type and (with --tracemalloc FRAMES) takes a tracemalloc snapshot; at the end it
prints the top growth sites and types between them, then runs a full collection and
malloc_trim(0) and shows what each gave back. Python bytes flat while RSS grows is the
allocator (fragmentation, arenas), not a leak; RSS falling after malloc_trim is free
memory glibc had not returned.
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
import threading
import time
import tracemalloc
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

    def __init__(self, port=None, env=None):
        if port is None:
            with socket.socket() as sock:
                sock.bind(("127.0.0.1", 0))
                port = sock.getsockname()[1]
        self.base = f"http://127.0.0.1:{port}"
        line = re.search(r"^web:\s*(.+)$", (ROOT / "Procfile").read_text(), re.M)
        env = {**os.environ, **(env or {}), "HOST": "127.0.0.1", "PORT": str(port)}
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

    def wait(self, timeout=120):
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


MiB = 2**20


class MemoryReports:
    """The server's memory reports (voiceflow.memory_debug): asked for by SIGUSR2."""

    def __init__(self, directory, pid):
        self.directory, self.pid = Path(directory), pid
        self.lock = threading.Lock()  # one request at a time

    def ask(self, label, **request):
        """The server's report `label`, after what `request` asks (a dict)."""
        path = self.directory / f"{label}.json"
        with self.lock:
            path.unlink(missing_ok=True)
            (self.directory / "request.json").write_text(
                json.dumps({"label": label, **request})
            )
            os.kill(self.pid, signal.SIGUSR2)
            deadline = time.monotonic() + 60
            while not path.exists():
                if time.monotonic() > deadline:
                    raise OSError(
                        f"no memory report {label} (is the server's "
                        "VOICEFLOW_MEMORY_DEBUG_DIR this directory?)"
                    )
                time.sleep(0.05)
            return json.loads(path.read_text())

    def snapshot(self, label):
        """The tracemalloc snapshot taken with report `label`, or None."""
        path = self.directory / f"{label}.tracemalloc"
        if not path.exists():
            return None
        return tracemalloc.Snapshot.load(str(path)).filter_traces(
            [
                tracemalloc.Filter(False, tracemalloc.__file__),
                tracemalloc.Filter(False, "*/voiceflow/memory_debug.py"),
            ]
        )


def python_bytes(report):
    """Bytes in Python objects: traced by tracemalloc if on, else pymalloc's."""
    if "traced" in report:
        return report["traced"]["current"]
    return report["pymalloc"].get("allocated", 0)


def memory_cells(report):
    """The memory columns of a sample row (MiB, and the collector's objects)."""
    malloc = report.get("malloc", {})
    return {
        "anon": report.get("RssAnon", 0) / MiB,
        "python": python_bytes(report) / MiB,
        "arenas": report["pymalloc"].get("arena_bytes", 0) / MiB,
        "m_used": (malloc.get("uordblks", 0) + malloc.get("hblkhd", 0)) / MiB,
        "m_free": malloc.get("fordblks", 0) / MiB,
        "gc_k": sum(report["gc"]["generations"]) / 1000,
    }


MEMORY_HEADS = {
    "anon": "anon_MiB",
    "python": "py_MiB",
    "arenas": "arena_MiB",
    "m_used": "m_used",
    "m_free": "m_free",
    "gc_k": "gc_kobj",
}


def _short_path(filename):
    for marker in ("site-packages/", "/lib/python3"):
        if marker in filename:
            return filename.split(marker, 1)[1]
    if filename.startswith(str(ROOT)):
        return os.path.relpath(filename, ROOT)
    return filename


def growth_sites(old, new, top):
    """Lines on the top allocation sites by growth from snapshot `old` to `new`."""
    lines = []
    stats = new.compare_to(old, "traceback")
    total = sum(stat.size_diff for stat in stats)
    lines.append(f"  all sites: {total / MiB:+.2f} MiB")
    for stat in stats[:top]:
        frames = list(stat.traceback)[::-1][:4]  # most recent first
        where = " < ".join(f"{_short_path(f.filename)}:{f.lineno}" for f in frames)
        lines.append(
            f"  {stat.size_diff / 1024:+9.1f} KiB {stat.count_diff:+7} blocks"
            f" (now {stat.size / 1024:8.1f} KiB)  {where}"
        )
    return lines


def type_growth(old, new, top):
    """Lines on the object types whose live count grew most from `old` to `new`."""
    before, after = old.get("types", {}), new.get("types", {})
    diffs = sorted(
        ((after.get(n, 0) - before.get(n, 0), n) for n in set(before) | set(after)),
        reverse=True,
    )
    total = sum(after.values()) - sum(before.values())
    lines = [f"  all objects: {total:+}"]
    lines += [
        f"  {d:+8} {name} (now {after.get(name, 0)})" for d, name in diffs[:top] if d
    ]
    return lines


def checkpoint_line(report):
    malloc, py = report.get("malloc", {}), report["pymalloc"]
    traced = report.get("traced", {})
    return (
        f"  {report['label']:>10}: rss {report.get('VmRSS', 0) / MiB:7.1f}  anon "
        f"{report.get('RssAnon', 0) / MiB:7.1f}  traced "
        f"{traced.get('current', 0) / MiB:6.1f} (+{traced.get('overhead', 0) / MiB:.1f}"
        f" tracemalloc)  pymalloc {py.get('allocated', 0) / MiB:6.1f} in "
        f"{py.get('arena_bytes', 0) / MiB:6.1f} arenas  malloc used "
        f"{(malloc.get('uordblks', 0) + malloc.get('hblkhd', 0)) / MiB:6.1f} free "
        f"{malloc.get('fordblks', 0) / MiB:6.1f}  gc objects "
        f"{report['gc']['generations']} collections {report['gc']['collections']}"
        + (f"  collected {report['collected']}" if "collected" in report else "")
        + (f"  trimmed {report['trimmed']}" if "trimmed" in report else "")
    )


def memory_summary(reports, memory, top):
    """Lines comparing the checkpoints' reports and snapshots."""
    lines = ["# memory checkpoints (MiB):"]
    lines += ["#" + checkpoint_line(r) for r in reports.values()]
    pairs = [
        ("base", "mid"),
        ("mid", "late"),
        ("base", "end"),
        ("end", "collected"),
    ]
    for old, new in pairs:
        if old not in reports or new not in reports:
            continue
        if reports[old].get("types") and reports[new].get("types"):
            lines.append(f"# live objects by type, {old} -> {new}:")
            grown = type_growth(reports[old], reports[new], top)
            lines += ["#" + line for line in grown]
        before, after = memory.snapshot(old), memory.snapshot(new)
        if before is not None and after is not None:
            lines.append(f"# tracemalloc growth by site, {old} -> {new}:")
            lines += ["#" + line for line in growth_sites(before, after, top)]
    return lines


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
                "sessions",
                "connects",
                "joins",
                "reloads",
                "leaves",
                "posts",
                "typing",
                "acks",
                "received",
                "missed",
                "errors",
                "failures",
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
                    await session.send(
                        {"type": "typing", "room": slug, "state": "start"}
                    )
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

    def __init__(self, base, pid, out, memory=None):
        self.base, self.pid, self.out = base, pid, out
        self.memory = memory  # MemoryReports, or None
        self.reports = {}  # checkpoint label -> the server's memory report
        self.rows = []
        self.names = None
        self.started = time.monotonic()

    def checkpoint(self, label, **request):
        """A memory report with live objects by type and a tracemalloc snapshot."""
        if self.memory is not None:
            request = {"types": True, "snapshot": True, **request}
            self.reports[label] = self.memory.ask(label, **request)

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
        if self.memory is not None:
            row["memory"] = memory_cells(self.memory.ask("sample"))
        if self.names is None:
            self.names = list(sizes)
            self._print_header()
        self.rows.append(row)
        cells = [
            f"{row['t']:7.0f}",
            f"{phase:>7}",
            f"{rss / 2**20:8.1f}",
        ]
        if self.memory is not None:
            cells += [
                f"{row['memory'][key]:>{len(head)}.1f}"
                for key, head in MEMORY_HEADS.items()
            ]
        cells += [f"{row['connections']:6}", f"{row['outputBytes']:8}"]
        cells += [f"{sizes.get(name, 0):>{self._width(name)}}" for name in self.names]
        print(" ".join(cells), file=self.out, flush=True)
        return row

    def _width(self, name):
        return max(6, len(self._short(name)))

    @staticmethod
    def _short(name):
        return name[:12]

    def _print_header(self):
        heads = [f"{'t_s':>7}", f"{'phase':>7}", f"{'rss_MiB':>8}"]
        if self.memory is not None:
            heads += list(MEMORY_HEADS.values())
        heads += [f"{'socks':>6}", f"{'unread':>8}"]
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


def _second_half_slopes(rows):
    """{series: (MiB/min, low, high)} over the churn's second half (None: too short).

    A leak keeps climbing at steady load; the allocator's high-water mark does not.
    """
    churn = [r for r in rows if r["phase"] == "churn"]
    if len(churn) < 4:
        return None
    half = churn[len(churn) // 2 :]
    minutes = max(1e-9, (half[-1]["t"] - half[0]["t"]) / 60)
    series = {"rss": [r["rss"] / MiB for r in half]}
    if "memory" in half[0]:
        series["python"] = [r["memory"]["python"] for r in half]
        series["anon"] = [r["memory"]["anon"] for r in half]
    return {
        name: ((values[-1] - values[0]) / minutes, min(values), max(values))
        for name, values in series.items()
    }


def verdict(baseline, rows, args):
    """(passed, lines): every structure back at its baseline; RSS near it, or flat
    over the churn's second half; Python's objects (--memory-debug) near theirs."""
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
    slopes = _second_half_slopes(rows)
    rss0, rss1 = baseline["rss"], end["rss"]
    peak = max(r["rss"] for r in rows)
    allowed = rss0 * args.rss_tolerance / 100
    if rss1 - rss0 <= allowed:
        state = "back to baseline"
    elif slopes and slopes["rss"][0] <= args.rss_slope:
        state = "above baseline, flat (the allocator's high-water mark)"
    else:
        state = "NOT back, still growing"
        passed = False
    lines.append(
        f"{'rss':>20}: baseline {rss0 / MiB:.1f} MiB, peak {peak / MiB:.1f}, end "
        f"{rss1 / MiB:.1f} ({(rss1 - rss0) / MiB:+.1f}; allowed "
        f"+{allowed / MiB:.1f}): {state}"
    )
    if "memory" in end:
        py0, py1 = baseline["memory"]["python"], end["memory"]["python"]
        py_ok = py1 - py0 <= py0 * args.rss_tolerance / 100
        passed = passed and py_ok
        lines.append(
            f"{'python':>20}: baseline {py0:.1f} MiB, peak "
            f"{max(r['memory']['python'] for r in rows):.1f}, end {py1:.1f} "
            f"({py1 - py0:+.1f}): {'back to baseline' if py_ok else 'NOT back'}"
        )
    for name, (slope, low, high) in (slopes or {}).items():
        lines.append(
            f"{name + ' slope':>20}: {slope:+.2f} MiB/min over the churn's 2nd half "
            f"(range {low:.1f}-{high:.1f})"
        )
    return passed, lines


async def soak(args, out):
    server = None
    if args.start:
        env = {}
        if args.memory_debug:
            env["VOICEFLOW_MEMORY_DEBUG_DIR"] = str(Path(args.memory_debug).resolve())
            env["VOICEFLOW_TRACEMALLOC_FRAMES"] = str(args.tracemalloc)
        if args.arena_max:
            env["MALLOC_ARENA_MAX"] = str(args.arena_max)
        server = Server(args.port, env)
        await asyncio.to_thread(server.wait)
        base, pid = server.base, server.pid
    else:
        base, pid = args.url.rstrip("/"), args.server_pid
    if not re.match(r"^http://(127\.\d+\.\d+\.\d+|localhost|\[::1\])(:\d+)?$", base):
        raise SystemExit("loopback only: --url must be http://127.x.x.x:PORT")
    memory = None
    if args.memory_debug:
        if not pid:
            raise SystemExit("--memory-debug needs --start or --server-pid")
        memory = MemoryReports(args.memory_debug, pid)
    try:
        return await _soak(args, out, base, pid, memory)
    finally:
        if server is not None:
            server.stop()


async def _soak(args, out, base, pid, memory):
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
    sampler = Sampler(base, pid, out, memory)
    tokens = list(tokens.values())

    async def checkpoints(seconds):
        # Under steady load: half-way and near the end of the churn.
        await asyncio.sleep(seconds * 0.5)
        await asyncio.to_thread(sampler.checkpoint, "mid")
        await asyncio.sleep(seconds * 0.45)
        await asyncio.to_thread(sampler.checkpoint, "late")

    async def phase(name, seconds, churning):
        stop = asyncio.Event()
        sampling = asyncio.ensure_future(sampler.every(args.sample, name, stop))
        churn = None
        if churning:
            churn = Churn(base, args, tokens, slugs)
            marks = None
            if name == "churn":
                marks = asyncio.ensure_future(checkpoints(seconds))
            await churn.run(seconds)
            if marks is not None:
                await marks
        else:
            await asyncio.sleep(seconds)
        stop.set()
        await sampling
        return churn

    if args.warmup:
        await phase("warmup", args.warmup, True)
        await phase("settle", args.quiet, False)
    baseline = await asyncio.to_thread(sampler.sample, "base")
    await asyncio.to_thread(sampler.checkpoint, "base")
    churn = await phase("churn", args.minutes * 60, True)
    await phase("quiet", args.quiet, False)
    end = await asyncio.to_thread(sampler.sample, "end")
    await asyncio.to_thread(sampler.checkpoint, "end")
    rows = sampler.rows[sampler.rows.index(baseline) :]
    passed, lines = verdict(baseline, rows, args)
    print(
        "# churn: " + ", ".join(f"{k} {v}" for k, v in churn.counts.items()), file=out
    )
    print(f"# closes by the server (code: count): {churn.closes or 'none'}", file=out)
    if memory is not None:
        # What a full collection, then returning free heap to the system, gives back.
        await asyncio.to_thread(sampler.checkpoint, "collected", collect=True)
        await asyncio.to_thread(
            sampler.checkpoint, "trimmed", trim=True, snapshot=False, types=False
        )
        for line in memory_summary(sampler.reports, memory, args.top):
            print(line, file=out)
        after = sampler.reports["trimmed"]
        lines.append(
            f"{'after gc + trim':>20}: rss {after['VmRSS'] / MiB:.1f} MiB "
            f"({(after['VmRSS'] - end['rss']) / MiB:+.1f} from the end)"
        )
    print("# verdict:", file=out)
    for line in lines:
        print("#   " + line, file=out)
    print(f"# {'PASS' if passed else 'FAIL'}", file=out, flush=True)
    return passed


def main():
    parser = argparse.ArgumentParser(
        description=__doc__.splitlines()[0],
        epilog=__doc__.split("\n\n")[-1],
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
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
        "--rss-tolerance",
        type=float,
        default=10,
        help="%% above baseline allowed at the end (RSS, and Python's objects)",
    )
    parser.add_argument(
        "--rss-slope",
        type=float,
        default=0.1,
        help="MiB/min of RSS growth over the churn's 2nd half that still counts as "
        "flat, for an RSS above the tolerance",
    )
    parser.add_argument("--prefix", help="user/room name tag (default: random)")
    parser.add_argument(
        "--memory-debug",
        metavar="DIR",
        help="memory reports in DIR (the server's VOICEFLOW_MEMORY_DEBUG_DIR; "
        "--start sets it): Python vs allocator columns, growth by type and site",
    )
    parser.add_argument(
        "--tracemalloc",
        type=int,
        default=0,
        metavar="FRAMES",
        help="with --start --memory-debug: trace allocations, FRAMES deep "
        "(slows the server; 0: off)",
    )
    parser.add_argument(
        "--top", type=int, default=15, help="growth sites and types to print"
    )
    parser.add_argument(
        "--arena-max",
        type=int,
        metavar="N",
        help="with --start: MALLOC_ARENA_MAX=N for the server (glibc)",
    )
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

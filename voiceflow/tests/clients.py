"""A chat client that does what the contract asks of one (fault tests, bench/audit.py).

It resends every unacked message with the same client_id after a reconnect, rejoins
with `since` = its last contiguous seq, and fills a seq gap that stays open for a
second by re-joining with `since`. It keeps what it saw, so a test can count.
"""

import asyncio
import itertools
import json
import random
import urllib.error
import urllib.request

import websockets


def ticket_url(base, token):
    """A socket URL with a fresh ticket from the server at `base` (blocking)."""
    req = urllib.request.Request(
        base + "/api/ws-ticket/",
        b"{}",
        {"Content-Type": "application/json", "Authorization": f"Token {token}"},
        method="POST",
    )
    with urllib.request.urlopen(req, timeout=3) as response:
        ticket = json.loads(response.read())["ticket"]
    return base.replace("http", "ws", 1) + f"/ws/chat/?ticket={ticket}"


class Client:
    """One user's tab: `run()` until `stop()`; `send(body)` queues a message."""

    def __init__(self, name, token, bases, room="lobby"):
        self.name, self.token, self.bases, self.room = name, token, list(bases), room
        self.outbox = {}  # client_id -> body: sent or not, no ack yet
        self.acked = {}  # client_id -> ack
        self.received = {}  # message id -> message (deduplicated by id)
        self.frames = 0  # message copies received (live, missed, offline, filled)
        self.live = set()  # ids that came as live `message` events
        self.seqs = set()
        self.last_seq = 0  # contiguous: every seq up to it is held
        self.connects = 0
        self.close_codes = []
        self.base = None
        self._ids = itertools.count(1)
        self._socket = None
        self._stopped = asyncio.Event()
        self._gap_task = None
        self._join_pending = False

    def send(self, body):
        client_id = f"{self.name}-{next(self._ids)}"
        self.outbox[client_id] = body
        if self._socket is not None:
            asyncio.ensure_future(self._send_message(self._socket, client_id))
        return client_id

    def stop(self):
        self._stopped.set()

    @property
    def connected(self):
        return self._socket is not None

    async def run(self):
        delay = 0.05
        for attempt in itertools.count():
            if self._stopped.is_set():
                return
            self.base = self.bases[attempt % len(self.bases)]
            try:
                url = await asyncio.to_thread(ticket_url, self.base, self.token)
                async with websockets.connect(url, open_timeout=3) as socket:
                    await self._serve(socket)
                    delay = 0.05
            except (
                TimeoutError,
                OSError,
                urllib.error.URLError,
                websockets.WebSocketException,
                KeyError,
                ValueError,
            ):
                pass
            finally:
                self._socket = None
            if self._stopped.is_set():
                return
            await asyncio.sleep(delay * random.uniform(0.5, 1.5))
            delay = min(delay * 2, 1.0)

    async def _serve(self, socket):
        stop = asyncio.ensure_future(self._stopped.wait())
        try:
            while True:
                recv = asyncio.ensure_future(socket.recv())
                done, _ = await asyncio.wait(
                    {recv, stop}, return_when="FIRST_COMPLETED"
                )
                if stop in done:
                    recv.cancel()
                    return
                try:
                    data = json.loads(recv.result())
                except websockets.ConnectionClosed as closed:
                    self.close_codes.append(closed.rcvd.code if closed.rcvd else None)
                    raise
                await self._handle(socket, data)
        finally:
            stop.cancel()

    async def _handle(self, socket, data):
        kind = data.get("type")
        if kind == "hello":
            self.connects += 1
            self._join_pending = True
            await socket.send(json.dumps(self._join_frame()))
        elif kind == "joined":
            self._socket = socket
            self._join_pending = False
            self._note(data["missed"])
            if data["truncated"]:  # more than one page missed: the next one now
                self._gap_check(socket, delay=0)
            elif data["last_seq"] > self.last_seq:  # live ones may still be coming
                self._gap_check(socket, delay=1.0)
            for client_id in list(self.outbox):  # no ack: assume nothing stored
                await self._send_message(socket, client_id)
        elif kind == "message":
            self.live.add(data["id"])
            self._note([data])
        elif kind == "offline_messages":
            self._note([m for m in data["messages"] if m["room"] == self.room])
        elif kind == "ack":
            self.acked[data["client_id"]] = data
            self.outbox.pop(data["client_id"], None)
        elif kind == "error" and data.get("request") == "message":
            pass  # unavailable or rate limited: the next reconnect or retry resends
        elif kind == "error" and data.get("request") == "join":
            self._join_pending = False
            self._gap_check(socket, delay=0.5)

    def _join_frame(self):
        return {"type": "join", "room": self.room, "since": self.last_seq}

    async def _send_message(self, socket, client_id):
        body = self.outbox.get(client_id)
        if body is None:
            return
        frame = {
            "type": "message",
            "room": self.room,
            "body": body,
            "client_id": client_id,
        }
        try:
            await socket.send(json.dumps(frame))
        except websockets.ConnectionClosed:
            pass

    def _note(self, messages):
        for message in messages:
            self.frames += 1
            self.received[message["id"]] = message
            self.seqs.add(message["seq"])
        while self.last_seq + 1 in self.seqs:
            self.last_seq += 1
        if self.seqs and max(self.seqs) > self.last_seq and self._socket is not None:
            self._gap_check(self._socket, delay=1.0)

    def _gap_check(self, socket, delay):
        """A gap still open after `delay` is a loss: re-join with since to fill it."""
        if self._gap_task and not self._gap_task.done():
            return

        async def check():
            await asyncio.sleep(delay)
            still_open = self.seqs and max(self.seqs) > self.last_seq
            if delay == 0 or (socket is self._socket and still_open):
                await self._rejoin(socket)

        self._gap_task = asyncio.ensure_future(check())

    async def resend_pending(self):
        """Resend what has no ack yet (as the browser does after its ack timeout)."""
        if self._socket is not None:
            for client_id in list(self.outbox):
                await self._send_message(self._socket, client_id)

    async def catch_up(self):
        """Re-join with since: what a client does on a gap or when it comes back."""
        if self._socket is not None:
            await self._rejoin(self._socket)

    async def _rejoin(self, socket):
        if self._join_pending:
            return  # its `joined` brings what is missing; do not ask twice
        self._join_pending = True
        try:
            await socket.send(json.dumps(self._join_frame()))
        except websockets.ConnectionClosed:
            pass


async def steady_traffic(clients, seconds, interval=0.05):
    """Every client sends a message every `interval` seconds for `seconds`."""
    loop = asyncio.get_running_loop()
    end = loop.time() + seconds
    for n in itertools.count():
        if loop.time() >= end:
            return
        for client in clients:
            client.send(f"{client.name} says {n}")
        await asyncio.sleep(interval)


async def settle(clients, timeout=20):
    """Wait until every message is acked and every client holds every seq up to the
    highest any of them knows; resend and catch up as a real client would. True if
    so."""
    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeout
    before = {}
    while loop.time() < deadline:
        target = max(
            [seq for c in clients for seq in c.seqs]
            + [ack["seq"] for c in clients for ack in c.acked.values()]
            + [0]
        )
        if all(not c.outbox and c.last_seq >= target and c.connected for c in clients):
            return True
        for client in clients:
            await client.resend_pending()
            if client.last_seq < target and before.get(client) == client.last_seq:
                await client.catch_up()  # no progress since the last look: stuck
            before[client] = client.last_seq
        await asyncio.sleep(0.5)
    return False


def audit(clients, stored):
    """Sent / acked / delivered / lost / duplicated; `stored` = the room's messages in
    the database (or history), as message objects."""
    ids = {m["id"] for m in stored}
    by_client_id = {m["client_id"]: m["id"] for m in stored}
    sent = sum(len(c.acked) + len(c.outbox) for c in clients)
    acked = {ack["client_id"]: ack["id"] for c in clients for ack in c.acked.values()}
    texts = [(m["user"], m["body"]) for m in stored]
    return {
        "sent": sent,
        "acked": len(acked),
        "unacked": sent - len(acked),
        "stored": len(stored),
        "delivered": sum(len(ids & set(c.received)) for c in clients),
        "expected_deliveries": len(ids) * len(clients),
        "lost_acked": sum(by_client_id.get(cid) != mid for cid, mid in acked.items()),
        "lost_deliveries": sum(len(ids - set(c.received)) for c in clients),
        "duplicated": len(texts) - len(set(texts)),
        "redelivered_frames": sum(c.frames - len(c.received) for c in clients),
    }

"""Single-use WebSocket tickets: Redis with REDIS_URL (every process), else memory.

Issued and redeemed on the event loop in one round trip each (SET, GETDEL); the
sync REST view (session-authenticated requests) issues them with a blocking client.

While Redis is unreachable (voiceflow.breaker), tickets are issued in this process's
memory, marked as such: single-use and hashed all the same, but redeemable only by
this process. Another process cannot tell such a ticket from a forged one, so it
answers "unavailable" (close 1013: the client retries with a new ticket), never
"unauthenticated"; so does any process for a Redis ticket while Redis is down.
"""

import hashlib
import secrets
import threading
import time
from collections import OrderedDict
from typing import TypeGuard

import redis
from django.conf import settings

from voiceflow.breaker import UNREACHABLE, redis_breaker, redis_usable
from voiceflow.redis import redis_key, redis_sync_client
from voiceflow.runtime import runtime

from .errors import Unavailable

# Starts the tickets issued in a process's memory in shared mode (Redis down).
LOCAL_MARK = "l."


def _key(ticket):
    # Only a hash is stored, so a store dump yields no usable tickets.
    return redis_key("wsticket", hashlib.sha256(ticket.encode()).hexdigest())


def _well_formed(ticket: object) -> TypeGuard[str]:
    return isinstance(ticket, str) and 0 < len(ticket) <= 128


class RedisTicketStore:
    """The shared store: a key per ticket that expires with it."""

    def __init__(self, url: str | None = None) -> None:
        self.url = url

    def issue(self, key: str, user_id: int, ttl: int) -> None:
        try:
            redis_sync_client(self.url).set(key, user_id, ex=ttl)
        except redis.exceptions.RedisError as error:
            raise Unavailable("Tickets cannot be issued; retry later.") from error

    async def aissue(self, key: str, user_id: int, ttl: int) -> None:
        try:
            await runtime().redis(self.url).set(key, user_id, ex=ttl)
        except redis.exceptions.RedisError as error:
            raise Unavailable("Tickets cannot be issued; retry later.") from error

    async def redeem(self, key: str) -> int | None:
        # GETDEL is atomic: of two racers for one ticket, one gets the user id.
        user_id = await runtime().redis(self.url).getdel(key)
        return None if user_id is None else int(user_id)


class MemoryTicketStore:
    """The embedded twin, for one process (issued in a thread, redeemed on the loop)."""

    def __init__(self) -> None:
        # key -> (user id, expiry), oldest first
        self.tickets: OrderedDict[str, tuple[int, float]] = OrderedDict()
        self.lock = threading.Lock()

    def _expire(self, now):
        # Issued with one TTL, so in order of expiry: the expired ones come first.
        tickets = self.tickets
        while tickets:
            key = next(iter(tickets))
            if tickets[key][1] > now:
                return
            del tickets[key]

    def issue(self, key: str, user_id: int, ttl: int, now: float | None = None) -> None:
        now = time.monotonic() if now is None else now
        with self.lock:
            self._expire(now)
            self.tickets[key] = (user_id, now + ttl)

    async def aissue(
        self, key: str, user_id: int, ttl: int, now: float | None = None
    ) -> None:
        self.issue(key, user_id, ttl, now)

    async def redeem(self, key: str, now: float | None = None) -> int | None:
        now = time.monotonic() if now is None else now
        with self.lock:
            self._expire(now)
            user_id, until = self.tickets.pop(key, (None, 0))
        return user_id if until > now else None

    def size(self) -> int:
        return len(self.tickets)

    def clear(self) -> None:
        with self.lock:
            self.tickets.clear()


memory_tickets = MemoryTicketStore()
redis_tickets = RedisTicketStore()  # REDIS_URL, read at each call


def _new(mark=""):
    """A new ticket, its store key and its lifetime."""
    ticket = mark + secrets.token_urlsafe(32)
    return ticket, _key(ticket), settings.VOICEFLOW["TICKET_TTL"]


def _local(user_id, error=None):
    """A ticket in this process's memory; marked as such in shared mode."""
    if error is not None:
        redis_breaker.failed(error)
    ticket, key, ttl = _new(LOCAL_MARK if settings.REDIS_URL else "")
    memory_tickets.issue(key, user_id, ttl)
    return ticket


def ticket_issue(user_id: int) -> str:
    """A new ticket for `user_id`, valid once within the ticket TTL."""
    if not redis_usable():
        return _local(user_id)
    ticket, key, ttl = _new()
    try:
        redis_tickets.issue(key, user_id, ttl)
    except Unavailable as unreachable:
        return _local(user_id, unreachable.__cause__)
    return ticket


async def ticket_aissue(user_id: int) -> str:
    """ticket_issue on the event loop."""
    if not redis_usable():
        return _local(user_id)
    ticket, key, ttl = _new()
    try:
        await redis_tickets.aissue(key, user_id, ttl)
    except Unavailable as unreachable:
        return _local(user_id, unreachable.__cause__)
    return ticket


async def ticket_redeem(ticket: object) -> int | None:
    """The user id the ticket was issued for, once; None if unknown, used or expired.

    Raises Unavailable when it cannot tell (the socket closes with 1013): a ticket
    of another process's memory, or Redis unreachable.
    """
    if not _well_formed(ticket):
        return None
    key = _key(ticket)
    if not settings.REDIS_URL or ticket.startswith(LOCAL_MARK):
        user_id = await memory_tickets.redeem(key)
        if user_id is None and settings.REDIS_URL:
            raise Unavailable("This ticket may be another server's; retry.")
        return user_id
    if redis_usable():
        try:
            return await redis_tickets.redeem(key)
        except UNREACHABLE as error:
            redis_breaker.failed(error)
    raise Unavailable("Tickets cannot be checked; retry later.")

"""Single-use WebSocket tickets: Redis with REDIS_URL (every process), else memory.

Issued and redeemed on the event loop in one round trip each (SET, GETDEL); the
sync REST view (session-authenticated requests) issues them with a blocking client.
"""

import hashlib
import secrets
import threading
import time
from collections import OrderedDict

import redis
from django.conf import settings

from voiceflow.redis import redis_key, redis_pipelined, redis_sync_client

from .errors import Unavailable


def _key(ticket):
    # Only a hash is stored, so a store dump yields no usable tickets.
    return redis_key("wsticket", hashlib.sha256(ticket.encode()).hexdigest())


def _well_formed(ticket):
    return isinstance(ticket, str) and 0 < len(ticket) <= 128


class RedisTicketStore:
    """The shared store: a key per ticket that expires with it."""

    def __init__(self, url=None):
        self.url = url

    def issue(self, key, user_id, ttl):
        try:
            redis_sync_client(self.url).set(key, user_id, ex=ttl)
        except redis.exceptions.RedisError as error:
            raise Unavailable("Tickets cannot be issued; retry later.") from error

    async def aissue(self, key, user_id, ttl):
        try:
            await redis_pipelined(self.url).set(key, user_id, ex=ttl)
        except redis.exceptions.RedisError as error:
            raise Unavailable("Tickets cannot be issued; retry later.") from error

    async def redeem(self, key):
        # GETDEL is atomic: of two racers for one ticket, one gets the user id.
        user_id = await redis_pipelined(self.url).getdel(key)
        return None if user_id is None else int(user_id)


class MemoryTicketStore:
    """The embedded twin, for one process (issued in a thread, redeemed on the loop)."""

    def __init__(self):
        self.tickets = OrderedDict()  # key -> (user id, expiry), oldest first
        self.lock = threading.Lock()

    def _expire(self, now):
        # Issued with one TTL, so in order of expiry: the expired ones come first.
        tickets = self.tickets
        while tickets:
            key = next(iter(tickets))
            if tickets[key][1] > now:
                return
            del tickets[key]

    def issue(self, key, user_id, ttl, now=None):
        now = time.monotonic() if now is None else now
        with self.lock:
            self._expire(now)
            self.tickets[key] = (user_id, now + ttl)

    async def aissue(self, key, user_id, ttl, now=None):
        self.issue(key, user_id, ttl, now)

    async def redeem(self, key, now=None):
        now = time.monotonic() if now is None else now
        with self.lock:
            self._expire(now)
            user_id, until = self.tickets.pop(key, (None, 0))
        return user_id if until > now else None

    def size(self):
        return len(self.tickets)

    def clear(self):
        with self.lock:
            self.tickets.clear()


memory_tickets = MemoryTicketStore()


def ticket_store():
    """Redis with REDIS_URL (shared by every process), else the in-memory twin."""
    return RedisTicketStore() if settings.REDIS_URL else memory_tickets


def _new():
    """A new ticket, its store key and its lifetime."""
    ticket = secrets.token_urlsafe(32)
    return ticket, _key(ticket), settings.VOICEFLOW["TICKET_TTL"]


def ticket_issue(user_id):
    """A new ticket for `user_id`, valid once within the ticket TTL."""
    ticket, key, ttl = _new()
    ticket_store().issue(key, user_id, ttl)
    return ticket


async def ticket_aissue(user_id):
    """ticket_issue on the event loop."""
    ticket, key, ttl = _new()
    await ticket_store().aissue(key, user_id, ttl)
    return ticket


async def ticket_redeem(ticket):
    """The user id the ticket was issued for, once; None if unknown, used or expired.

    Raises the store's error if Redis is unreachable (the socket closes with 1013).
    """
    if not _well_formed(ticket):
        return None
    return await ticket_store().redeem(_key(ticket))

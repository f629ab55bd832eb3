"""Single-use WebSocket tickets, kept in the cache (Redis with REDIS_URL)."""

import hashlib
import secrets

from django.conf import settings
from django.core.cache import cache


def _key(ticket):
    # Only a hash is stored, so a cache dump yields no usable tickets.
    return "wsticket:" + hashlib.sha256(ticket.encode()).hexdigest()


def ticket_issue(user_id):
    """A new ticket for `user_id`, valid once within the ticket TTL."""
    ticket = secrets.token_urlsafe(32)
    cache.set(_key(ticket), user_id, timeout=settings.VOICEFLOW["TICKET_TTL"])
    return ticket


def ticket_redeem(ticket):
    """The user id the ticket was issued for, once; None if unknown, used or expired.

    Sync (the cache has no native async client): callers run it in a worker thread
    together with the user lookup, one hop instead of three. Raises the cache's error
    if the cache is unreachable.
    """
    if not ticket or len(ticket) > 128:
        return None
    key = _key(ticket)
    user_id = cache.get(key)
    # delete() reports whether this caller removed it: of two racers only one wins.
    if user_id is None or not cache.delete(key):
        return None
    return user_id

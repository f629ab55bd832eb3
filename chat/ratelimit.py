"""Sliding-window rate limits, shared by every server process through Redis.

A key's window is a log of hit timestamps (a sorted set in Redis, a deque in memory).
A check drops the hits older than the window, and if fewer than `limit` remain, logs
this one. A refused check logs nothing, so refusals never extend the wait, and
`retry_after` is exact: when the hit that makes room leaves the window.

Redis: one Lua script per check (EVALSHA; the client's script object loads it again if
the script cache was emptied), so a check is one atomic round trip; each key expires
one window after its newest hit. Key: `<REDIS_KEY_PREFIX>:rl:<limit name>:<who>` (user
id or client IP).

Fail-soft: while Redis is unreachable (voiceflow.breaker), checks go to this process's
in-memory twin at the same rates, so limits hold per process instead of refusing
everything; once Redis answers again, checks go back to it.
"""

from __future__ import annotations

import ipaddress
import itertools
import os
import threading
import time
from collections import deque
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from functools import lru_cache
from typing import TYPE_CHECKING, Any, cast

import redis
from django.conf import settings
from rest_framework.throttling import BaseThrottle

from voiceflow import metrics
from voiceflow.breaker import redis_breaker, redis_usable
from voiceflow.redis import redis_key, redis_sync_client
from voiceflow.runtime import runtime

from .errors import RateLimited, Unavailable

if TYPE_CHECKING:
    from django.http import HttpRequest
    from rest_framework.request import Request
    from rest_framework.views import APIView

# KEYS[1] the key; ARGV now (ms), window (ms), limit, member (unique per hit).
# Returns {allowed, hits in the window, ms until a slot frees (0 if allowed)};
# the last as a string because Redis truncates Lua numbers to integers.
SLIDING_WINDOW_LUA = """
local now = tonumber(ARGV[1])
local window = tonumber(ARGV[2])
local limit = tonumber(ARGV[3])
redis.call('ZREMRANGEBYSCORE', KEYS[1], '-inf', now - window)
local count = redis.call('ZCARD', KEYS[1])
if count < limit then
  redis.call('ZADD', KEYS[1], now, ARGV[4])
  redis.call('PEXPIRE', KEYS[1], math.ceil(window))
  return {1, count + 1, '0'}
end
local last = count - limit
local freeing = redis.call('ZRANGE', KEYS[1], last, last, 'WITHSCORES')
return {0, count, tostring(tonumber(freeing[2]) + window - now)}
"""

_hit_ids = itertools.count()
_process_tag = f"{os.getpid():x}-{os.urandom(3).hex()}"


@dataclass(frozen=True)
class Decision:
    """The outcome of one check; `member` identifies the logged hit (for a refund)."""

    allowed: bool
    retry_after: float  # seconds; 0 when allowed
    key: str
    member: str | None
    local: bool = False  # counted in this process's memory, not in Redis

    def refusal(self, what: str) -> RateLimited:
        return RateLimited(
            f"Too many {what}; retry in {self.retry_after:.1f} s.",
            retry_after=round(self.retry_after, 3),
        )


def _member(now_ms):
    return f"{now_ms:.3f}:{_process_tag}:{next(_hit_ids)}"


def _decision(key, member, reply):
    allowed, _count, wait_ms = reply
    if int(allowed):
        return Decision(True, 0.0, key, member)
    return Decision(False, max(0.0, float(wait_ms) / 1000), key, None)


class RedisRateLimiter:
    """The shared backend: one Lua round trip per check."""

    def __init__(self, url: str | None = None) -> None:
        self.url = url
        # redis-py's script objects of the sync clients (one client per address):
        # EVALSHA, loading the script again after a SCRIPT FLUSH. The loop's
        # PipelinedRedis keeps its own.
        self._sync_scripts: dict = {}

    def _args(self, key, limit, window, now):
        now_ms = now * 1000
        member = _member(now_ms)
        return member, [key], [repr(now_ms), repr(window * 1000), limit, member]

    async def hit(self, key: str, limit: int, window: float, now: float) -> Decision:
        member, keys, args = self._args(key, limit, window, now)
        script = runtime().redis(self.url).register_script(SLIDING_WINDOW_LUA)
        try:
            reply = await script(keys, args)
        except redis.exceptions.RedisError as error:
            raise Unavailable("Rate limits cannot be checked; retry later.") from error
        return _decision(key, member, reply)

    def hit_sync(self, key: str, limit: int, window: float, now: float) -> Decision:
        member, keys, args = self._args(key, limit, window, now)
        client = redis_sync_client(self.url)
        script = self._sync_scripts.get(client)
        if script is None:
            script = self._sync_scripts[client] = client.register_script(
                SLIDING_WINDOW_LUA
            )
        try:
            reply = script(keys, args)
        except redis.exceptions.RedisError as error:
            raise Unavailable("Rate limits cannot be checked; retry later.") from error
        return _decision(key, member, reply)

    async def refund(self, decision: Decision) -> None:
        await runtime().redis(self.url).zrem(decision.key, decision.member)

    def refund_sync(self, decision: Decision) -> None:
        member = cast(str, decision.member)  # an allowed hit's, so never None
        redis_sync_client(self.url).zrem(decision.key, member)


class MemoryRateLimiter:
    """The embedded twin: the same algorithm on deques, for one process."""

    def __init__(self) -> None:
        self._logs: dict = {}  # key -> (window, deque of (time, member))
        self._lock = threading.Lock()  # sync views run in threads, sockets on the loop
        self._checks = 0
        self._next_sweep = 0.0

    def hit_sync(self, key: str, limit: int, window: float, now: float) -> Decision:
        with self._lock:
            self._checks += 1
            # Keys of users and clients gone quiet go within a minute, or within 1000
            # checks under load (a sweep is O(keys)).
            if self._checks % 1000 == 0 or now >= self._next_sweep:
                self._next_sweep = now + 60
                self._drop_expired(now)
            _window, log = self._logs.setdefault(key, (window, deque()))
            while log and log[0][0] <= now - window:
                log.popleft()
            if len(log) < limit:
                member = _member(now * 1000)
                log.append((now, member))
                self._logs[key] = (window, log)
                return Decision(True, 0.0, key, member, local=True)
            freeing = log[len(log) - limit][0]
            wait = max(0.0, freeing + window - now)
            return Decision(False, wait, key, None, local=True)

    async def hit(self, key: str, limit: int, window: float, now: float) -> Decision:
        return self.hit_sync(key, limit, window, now)

    async def refund(self, decision: Decision) -> None:
        self.refund_sync(decision)

    def refund_sync(self, decision: Decision) -> None:
        with self._lock:
            entry = self._logs.get(decision.key)
            if entry:
                log = entry[1]
                for item in log:
                    if item[1] == decision.member:
                        log.remove(item)
                        break

    def clear(self) -> None:
        with self._lock:
            self._logs.clear()

    def size(self) -> int:
        """How many keys (user or client, and limit) it holds."""
        return len(self._logs)

    def _drop_expired(self, now):
        for key, (window, log) in list(self._logs.items()):
            if not log or log[-1][0] <= now - window:
                del self._logs[key]


memory_limiter = MemoryRateLimiter()
redis_limiter = RedisRateLimiter()  # REDIS_URL, read at each call

# Epoch seconds of a check not given `now` (tests replace it to move time).
clock: Callable[[], float] = time.time


def rate(name: str) -> tuple[int, float]:
    """(limit, window seconds) of a named limit, scaled by the multiplier."""
    conf = settings.VOICEFLOW
    base = conf["RATE_LIMITS"][name]
    return max(1, int(base["limit"] * conf["RATE_LIMIT_MULTIPLIER"])), base["window"]


async def rate_hit(name: str, who: int | str, *, now: float | None = None) -> Decision:
    """Count one `name` hit for `who`; the Decision says whether it is allowed.

    In Redis (every process's hits together); in this process's memory without
    REDIS_URL, or while Redis is unreachable.
    """
    limit, window = rate(name)
    key = redis_key("rl", name, who)
    now = clock() if now is None else now
    if redis_usable():
        try:
            return _counted(name, await redis_limiter.hit(key, limit, window, now))
        except Unavailable as unreachable:
            redis_breaker.failed(unreachable.__cause__)
    return _counted(name, memory_limiter.hit_sync(key, limit, window, now))


async def rate_enforce(name: str, who: int | str, what: str) -> Decision:
    """rate_hit that raises RateLimited (naming `what`) when over the limit."""
    decision = await rate_hit(name, who)
    if not decision.allowed:
        raise decision.refusal(what)
    return decision


def rate_hit_sync(name: str, who: int | str, *, now: float | None = None) -> Decision:
    """rate_hit for sync code (DRF throttles): same script, blocking client."""
    limit, window = rate(name)
    key = redis_key("rl", name, who)
    now = clock() if now is None else now
    if redis_usable():
        try:
            return _counted(name, redis_limiter.hit_sync(key, limit, window, now))
        except Unavailable as unreachable:
            redis_breaker.failed(unreachable.__cause__)
    return _counted(name, memory_limiter.hit_sync(key, limit, window, now))


def _counted(name, decision):
    if not decision.allowed:
        metrics.RATE_LIMITED.labels(name).inc()
    return decision


async def rate_refund(decision: Decision) -> None:
    """Un-count an allowed hit that turned out to be a replay (best effort)."""
    if not decision.allowed:
        return
    if decision.local:
        memory_limiter.refund_sync(decision)
        return
    if redis_breaker.down:
        return  # the hit stays counted: the user is limited slightly early, never late
    try:
        await redis_limiter.refund(decision)
    except redis.exceptions.RedisError:
        pass  # counted, as above


def rate_hits_sync(limits: list[tuple[str, str]]) -> list[Decision]:
    """Count one hit on each (name, who) limit, in order, for sync views and forms.

    Over one of them: the hits already counted are refunded (a refused attempt counts
    nowhere) and RateLimited is raised.
    """
    decisions: list = []
    for name, who in limits:
        decision = rate_hit_sync(name, who)
        if not decision.allowed:
            rate_refund_sync(decisions)
            raise decision.refusal(REFUSED_WHAT.get(name, "requests"))
        decisions.append(decision)
    return decisions


def rate_refund_sync(decisions: list[Decision]) -> None:
    """Un-count allowed hits (a login that succeeded, a form that was refused)."""
    for decision in decisions:
        if not decision.allowed:
            continue
        if decision.local:
            memory_limiter.refund_sync(decision)
        elif not redis_breaker.down:
            try:
                redis_limiter.refund_sync(decision)
            except redis.exceptions.RedisError:
                pass  # counted: limited slightly early, never late


# What a refusal of each limit says: "Too many <what>; retry in 12.0 s."
REFUSED_WHAT = {
    "login": "login attempts",
    "login_user": "login attempts",
    "signup": "sign-ups",
    "room_create": "rooms created",
}


@lru_cache(maxsize=8)
def _networks(proxies):
    return tuple(ipaddress.ip_network(p, strict=False) for p in proxies)


def _trusted(address):
    try:
        ip = ipaddress.ip_address(address)
    except ValueError:
        return False
    return any(ip in net for net in _networks(tuple(settings.TRUSTED_PROXIES)))


def client_ip(peer: str | None, forwarded_for: str | None = None) -> str:
    """The client's IP: the peer, or behind a trusted proxy the nearest untrusted hop.

    X-Forwarded-For is read only when the peer is a trusted proxy (TRUSTED_PROXIES),
    right to left, skipping trusted hops, so a client cannot forge its address. The
    one rule for every use (rate limits, /metrics, logs): the server itself (uvicorn's
    proxy headers) never rewrites the peer.
    """
    if not peer or not forwarded_for or not _trusted(peer):
        return peer or "unknown"
    hops = [hop.strip() for hop in forwarded_for.split(",") if hop.strip()]
    for hop in reversed(hops):
        try:
            ipaddress.ip_address(hop)
        except ValueError:
            return peer  # a garbled header: fall back to the proxy itself
        if not _trusted(hop):
            return hop
    return hops[0] if hops else peer


def scope_client_ip(scope: Mapping[str, Any]) -> str:
    """client_ip of an ASGI scope (WebSocket or HTTP)."""
    peer = (scope.get("client") or (None,))[0]
    forwarded = [
        value.decode("latin-1")
        for name, value in scope.get("headers", ())
        if name == b"x-forwarded-for"
    ]
    return client_ip(peer, ",".join(forwarded) or None)


def scope_secure(scope: Mapping[str, Any]) -> bool:
    """True if the client came over TLS: to us, or to a trusted proxy that says so.

    X-Forwarded-Proto counts only from a TRUSTED_PROXIES peer (as X-Forwarded-For).
    """
    if scope.get("scheme") in ("https", "wss"):
        return True
    if not settings.TRUSTED_PROXIES:
        return False
    peer = (scope.get("client") or (None,))[0]
    if not peer or not _trusted(peer):
        return False
    protos = [
        value.decode("latin-1")
        for name, value in scope.get("headers", ())
        if name == b"x-forwarded-proto"
    ]
    # The proxy nearest to us appends last.
    last = ",".join(protos).split(",")[-1].strip().lower() if protos else ""
    return last == "https"


def request_client_ip(request: HttpRequest) -> str:
    """client_ip of a Django request (REMOTE_ADDR is the ASGI scope's client)."""
    meta = request.META
    return client_ip(meta.get("REMOTE_ADDR"), meta.get("HTTP_X_FORWARDED_FOR"))


class ClientIpThrottle(BaseThrottle):
    """REST requests per client IP, on the shared sliding-window limiter.

    Sync views run in a worker thread, so this uses the limiter's blocking client (the
    same Lua script): async_to_sync would make a new event loop, and with it a new
    Redis connection, per request wherever no server loop is running (tests, WSGI).
    Refusals raise RateLimited (429 + Retry-After).
    """

    def allow_request(self, request: Request, view: APIView) -> bool:
        if getattr(request, "_rate_counted", False):
            return True
        request._rate_counted = True
        decision = rate_hit_sync("rest", request_client_ip(request))
        if not decision.allowed:
            raise decision.refusal("requests")
        return True

"""Writes: sockets come and go, join and leave rooms, change status; events follow.

Every function takes the clock (`now`, epoch seconds) so tests can move time; the
default is `clock()`, the wall clock (tests may replace it). Events are sent only
when the stored state changed.

Events coalesce: a server process sends at most one `presence` event per user, and
one member event per user and room, per PRESENCE_EVENT_INTERVAL. The first change
goes out at once; changes within the interval wait for its end, when the state as it
is then is sent (nothing if it is back to what was last sent). So a user flapping a
room or their status costs the room one event a second, and the last one is right.

While Redis is unreachable presence pauses: the writes a socket makes (connect,
touches, joins, leaves, status, disconnect) store and send nothing and raise nothing
(`_paused`); once Redis answers again, each server process registers its live sockets
afresh (`presence_watch_start`), so the store is right again without a reconnect.
"""

import asyncio
import functools
import logging
import os
import socket
import time
import uuid
from collections import defaultdict
from collections.abc import Awaitable, Callable, Iterable
from dataclasses import dataclass

from django.conf import settings

from voiceflow import metrics
from voiceflow.breaker import UNREACHABLE, redis_breaker
from voiceflow.runtime import runtime

from . import broadcast
from .signals import user_went_offline
from .status import OFFLINE, presence_status, socket_expiry
from .store import presence_store

logger = logging.getLogger(__name__)

# Names this server process in the store (diagnostics: whose sockets a sweep removed).
PROCESS_ID = f"{socket.gethostname()}:{os.getpid()}:{uuid.uuid4().hex[:6]}"

_tasks: set[asyncio.Task] = (
    set()
)  # grace timers and typing stops in flight (a task needs a reference)


class _ProcessTasks:
    """The process's own presence tasks (its Runtime's app state), each started by
    the first socket."""

    def __init__(self) -> None:
        self.sweeper: asyncio.Task | None = None  # embedded mode's sweep
        self.watcher: asyncio.Task | None = None  # shared mode's store watch


# Epoch seconds: every write and timer here, and presence's reads, take `now` from it
# unless given one (tests replace it to move time).
clock: Callable[[], float] = time.time


def _clock(now):
    return clock() if now is None else now


def _paused(default):
    """While Redis is unreachable, the decorated write returns `default` instead of
    raising: presence pauses, and the restore after the outage makes it right."""

    def decorate(write):
        @functools.wraps(write)
        async def paused(*args, **kwargs):
            try:
                return await write(*args, **kwargs)
            except UNREACHABLE:
                return default

        return paused

    return decorate


def _spawn(coro):
    task = asyncio.get_running_loop().create_task(coro)
    _tasks.add(task)
    task.add_done_callback(_tasks.discard)
    return task


class _Coalescer:
    """When this process last sent an event per key, and the flushes waiting."""

    def __init__(self):
        self.last = {}  # key -> `now` of its last event
        self.flushes = {}  # key -> task that sends the state at the interval's end
        self.prune_at = 1024

    def wait(self, key, now):
        """Seconds until an event for `key` may go out (0: now)."""
        last = self.last.get(key)
        if last is None:
            return 0.0
        return max(0.0, last + settings.VOICEFLOW["PRESENCE_EVENT_INTERVAL"] - now)

    def sent(self, key, now):
        self.last[key] = now
        if len(self.last) >= self.prune_at:  # amortised: forget intervals long over
            since = now - settings.VOICEFLOW["PRESENCE_EVENT_INTERVAL"]
            self.last = {k: at for k, at in self.last.items() if at > since}
            self.prune_at = max(1024, 2 * len(self.last))

    def defer(self, key, wait, flush):
        """Call `flush()` in `wait` seconds, unless one is waiting for `key` already
        (it reads the state when it runs, so it covers this change too)."""
        if key not in self.flushes:
            self.flushes[key] = _spawn(self._flush_later(key, wait, flush))

    async def _flush_later(self, key, wait, flush):
        await asyncio.sleep(wait)
        self.flushes.pop(key, None)
        try:
            await flush()
        except Exception:
            logger.exception("presence event flush for %s failed", key)


_events = _Coalescer()
_leaves: dict[
    tuple[int, str], float
] = {}  # (user id, slug) -> when the leave whose member_left waits was made
_settling: defaultdict[int, set[str]] = defaultdict(
    set
)  # user id -> rooms of a grace expiry that waits


def presence_events_reset() -> None:
    """Forget when events were sent and drop the waiting flushes (tests)."""
    global _events
    for task in _events.flushes.values():
        task.cancel()
    _events = _Coalescer()
    _leaves.clear()
    _settling.clear()


async def _announce(store, user_id, now, user=None):
    """Recompute the user's status (from `user` if just read); broadcast a change.

    Returns (the user as read, whether a `presence` event went out).
    """
    conf = settings.VOICEFLOW
    key = ("presence", user_id)
    for _ in range(5):  # another process may announce in between: compare and swap
        if user is None:
            user = await store.user_get(user_id)
        status = presence_status(user, now, conf)
        if status == user.announced:
            return user, False
        wait = _events.wait(key, now)
        if wait:
            _events.defer(key, wait, functools.partial(_announce_later, user_id))
            return user, False
        if await store.status_swap(user_id, user.announced, status):
            _events.sent(key, now)
            await broadcast.presence_changed(user.username, status, user.rooms)
            if status == OFFLINE:
                await _went_offline(user, now)
            return user, True
        user = None  # lost the swap: read again
    return user, False


async def _announce_later(user_id):
    await _announce(presence_store(), user_id, clock())


async def _went_offline(user, now):
    """Tell the hook's receivers (chat's offline queue) once the swap is won."""
    since = user.left_at if user.left_at is not None else now
    try:
        await user_went_offline.asend(sender=None, user_id=user.user_id, since=since)
    except Exception:
        logger.exception("user_went_offline hook for user %s failed", user.user_id)


@_paused(True)
async def presence_connect(
    *, sid: str, user_id: int, username: str, now: float | None = None
) -> bool:
    """Register a new socket; False if the user already has the most sockets allowed."""
    now = _clock(now)
    store = presence_store()
    cap = settings.VOICEFLOW["MAX_SOCKETS_PER_USER"]
    user = await store.socket_add(sid, user_id, username, PROCESS_ID, now, cap)
    if user is None:
        return False
    await _announce(store, user_id, now, user)
    return True


@_paused(None)
async def presence_disconnect(*, sid: str, now: float | None = None) -> None:
    """Forget a socket; its rooms and the user's status wait out the grace period."""
    now = _clock(now)
    store = presence_store()
    removal = await store.socket_remove(sid, now)
    if removal is None:
        return  # already removed (closed for silence, or swept)
    if removal.sockets_left:
        await _announce(store, removal.user_id, now)  # e.g. the rest are all away
    if removal.departed or not removal.sockets_left:
        grace = settings.VOICEFLOW["OFFLINE_GRACE"]
        _spawn(_grace_expire(removal.user_id, removal.departed, now + grace))


async def _grace_expire(user_id, rooms, at):
    await asyncio.sleep(max(0.0, at - clock()) + 0.01)
    try:
        await _settle(presence_store(), user_id, rooms, clock())
    except Exception:
        logger.exception("presence grace expiry of user %s failed", user_id)


async def _settle(store, user_id, rooms, now):
    """Apply the user's due grace expiries: status first (to rooms they were in), then
    `member_left` for each room they did not come back to. Returns (changed, left).

    Waits as a whole while a `presence` event for the user may not go out yet, so
    `offline` still comes before `member_left` and reaches the rooms they left.
    """
    wait = _events.wait(("presence", user_id), now)
    if wait:
        _settling[user_id].update(rooms)
        later = functools.partial(_settle_later, user_id)
        _events.defer(("settle", user_id), wait, later)
        return False, 0
    before = now - settings.VOICEFLOW["OFFLINE_GRACE"]
    await store.departure_settle(user_id, None, before)
    user, changed = await _announce(store, user_id, now)
    left = 0
    for slug in sorted(rooms):
        # No name: the user's key expired long ago; nobody can still be showing them.
        if await store.departure_settle(user_id, slug, before) and user.username:
            _events.sent(("member", user_id, slug), now)
            await broadcast.member_left(slug, user.username)
            left += 1
    return changed, left


async def _settle_later(user_id):
    rooms = _settling.pop(user_id, set())
    await _settle(presence_store(), user_id, rooms, clock())


@_paused(True)
async def presence_touch(
    *, sid: str, user_id: int, active: bool = False, now: float | None = None
) -> bool:
    """A frame arrived (throttled by the caller); `active` ones also count as activity.

    False if the store no longer knows the socket (Redis lost it, or it was swept):
    the caller registers it again (`presence_restore`).
    """
    now = _clock(now)
    store = presence_store()
    if not await store.socket_touch(sid, now, active):
        return False
    if active:
        await _announce(store, user_id, now)  # away -> online
    return True


@_paused(None)
async def presence_set_away(*, sid: str, away: bool, now: float | None = None) -> None:
    """The socket's `status` frame: away, or online (which also counts as activity)."""
    now = _clock(now)
    store = presence_store()
    user_id = await store.socket_set_away(sid, away, now)
    if user_id is not None:
        await _announce(store, user_id, now)


@_paused(False)
async def presence_room_enter(
    *, sid: str, user_id: int, username: str, slug: str, now: float | None = None
) -> bool:
    """The socket joined `slug`; `member_joined` if it is the user's first one there."""
    now = _clock(now)
    store = presence_store()
    key = ("member", user_id, slug)
    wait = _events.wait(key, now)
    entry = await store.room_enter(sid, slug, now, announce=not wait)
    if entry is None:  # the socket is gone (swept)
        return False
    added, user = entry
    if added:
        _events.sent(key, now)
        await broadcast.member_joined(slug, username)
    elif wait:  # not listed yet: member_joined (if still there) at the interval's end
        later = functools.partial(_member_flush, user_id, username, slug)
        _events.defer(key, wait, later)
    await _announce(store, user_id, now, user)  # a join is activity
    return added


@_paused(False)
async def presence_room_exit(
    *, sid: str, user_id: int, username: str, slug: str, now: float | None = None
) -> bool:
    """The socket left `slug`; `member_left` if it was the user's last there: at once,
    or at the end of the event interval if one was sent less than that ago."""
    now = _clock(now)
    key = ("member", user_id, slug)
    wait = _events.wait(key, now)
    if await presence_store().room_exit(sid, slug, now, announce=not wait):
        _events.sent(key, now)
        await broadcast.member_left(slug, username)
        return True
    if wait:  # still listed: member_left (unless back by then) at the interval's end
        _leaves[(user_id, slug)] = now
        later = functools.partial(_member_flush, user_id, username, slug)
        _events.defer(key, wait, later)
    return False


async def _member_flush(user_id, username, slug):
    """The end of a member event interval: tell the room where the user is now."""
    store = presence_store()
    now = clock()
    key = ("member", user_id, slug)
    left_at = _leaves.pop((user_id, slug), None)
    # Only the leave's own departure: a later disconnect's grace is not cut short.
    if left_at is not None and await store.departure_settle(user_id, slug, left_at):
        _events.sent(key, now)
        await broadcast.member_left(slug, username)
    elif await store.room_announce(user_id, slug):
        _events.sent(key, now)
        await broadcast.member_joined(slug, username)


@_paused(True)
async def presence_restore(
    *,
    sid: str,
    user_id: int,
    username: str,
    rooms: Iterable[str],
    away: bool,
    now: float | None = None,
    resync: bool = False,
) -> bool:
    """Register again a live socket the store lost (Redis came back empty), with its
    rooms and its `status: away`. Silent: nobody was told it went, so nobody is told
    it is back. False if the user already holds the most sockets allowed.

    `resync` (after Redis was unreachable): registered afresh even if the store still
    knows it, so what changed meanwhile counts (rooms joined, left, its status); a
    room it left meanwhile gets its `member_left` when the grace is over.
    """
    now = _clock(now)
    store = presence_store()
    if resync:
        await store.socket_remove(sid, now)
    elif await store.socket_touch(sid, now):
        return True  # known: restored already (its own touch, or the watch)
    cap = settings.VOICEFLOW["MAX_SOCKETS_PER_USER"]
    if await store.socket_add(sid, user_id, username, PROCESS_ID, now, cap) is None:
        return False
    for slug in rooms:
        await store.room_enter(sid, slug, now)
    if away:
        await store.socket_set_away(sid, True, now)
    user = await store.user_get(user_id)
    status = presence_status(user, now, settings.VOICEFLOW)
    if status != user.announced:
        await store.status_swap(user_id, user.announced, status)
    return True


def presence_watch_start(restore: Callable[[], Awaitable[None]]) -> None:
    """Shared mode: watch that the store still knows this process; when Redis comes
    back empty (restarted without persistence), or answers again after this process
    found it unreachable, call `restore`, which registers the process's live sockets
    again (`presence_restore`, resync) instead of closing them.

    One task per process, started by the first socket; a no-op in embedded mode.
    """
    if not settings.REDIS_URL:
        return
    tasks = runtime().app_state(_ProcessTasks)
    if tasks.watcher is None or tasks.watcher.done():
        tasks.watcher = asyncio.get_running_loop().create_task(_watch_store(restore))


async def _watch_store(restore):
    watched = None  # the store whose mark is known to be set (the first check sets it)
    outages = redis_breaker.outages  # those seen: a later one calls for a restore
    while True:
        store = presence_store()
        known, watched = watched is store, store
        try:
            seen = redis_breaker.outages
            marked = await store.process_mark(PROCESS_ID)
        except Exception:
            logger.debug("presence store unreachable", exc_info=True)
        else:
            lost = known and not marked
            if lost or seen != outages:
                outages = seen
                logger.warning(
                    "presence store lost this process's sockets: registering again"
                    if lost
                    else "redis answers again: registering this process's sockets",
                    extra={"event": "presence_restored"},
                )
                try:
                    await restore()
                except Exception:
                    logger.exception("presence restore failed")
        interval = settings.VOICEFLOW["PRESENCE_TOUCH_INTERVAL"]
        await asyncio.sleep(max(interval, 1.0))


@dataclass
class SweepReport:
    sockets_removed: int = 0
    status_changes: int = 0
    members_left: int = 0

    def __str__(self) -> str:
        return (
            f"removed {self.sockets_removed} dead sockets, "
            f"{self.status_changes} status changes, {self.members_left} members left"
        )


async def presence_sweep(now: float | None = None) -> SweepReport:
    """Drop dead sockets, apply away and grace expiries, broadcast what changed."""
    now = _clock(now)
    conf = settings.VOICEFLOW
    store = presence_store()
    report = SweepReport()
    # user id -> rooms whose grace may be over
    rooms_of: defaultdict[int, set[str]] = defaultdict(set)
    for sid, seen_at in await store.sockets_dead(now - socket_expiry(conf)):
        # Silent past the dead timeout, so past its grace too: it left when last seen.
        removal = await store.socket_remove(sid, seen_at)
        if removal is not None:
            report.sockets_removed += 1
            rooms_of[removal.user_id].update(removal.departed)
    for user_id, slug in await store.departures_due(now - conf["OFFLINE_GRACE"]):
        rooms_of[user_id].update([slug] if slug else [])
    for user_id in await store.users_idle(now - conf["AWAY_AFTER"]):
        rooms_of.setdefault(user_id, set())
    for user_id, rooms in rooms_of.items():
        changed, left = await _settle(store, user_id, rooms, now)
        report.status_changes += changed
        report.members_left += left
    try:
        await store.totals_repair()
    except Exception:
        logger.warning("presence totals repair failed", exc_info=True)
    metrics.SWEEP_RUNS.inc()
    metrics.SWEEP_REMOVALS.inc(report.sockets_removed)
    return report


def embedded_sweeper_start() -> None:
    """Embedded mode: this process sweeps itself (nothing else can reach its sockets).

    One task per process, started lazily by the first socket; a no-op with Redis,
    where `manage.py sweep_presence --loop` does the sweeping.
    """
    if settings.REDIS_URL:
        return
    tasks = runtime().app_state(_ProcessTasks)
    if tasks.sweeper is None or tasks.sweeper.done():
        tasks.sweeper = asyncio.get_running_loop().create_task(_sweep_forever())


async def _sweep_forever():
    while True:
        await asyncio.sleep(settings.VOICEFLOW["PRESENCE_SWEEP_INTERVAL"])
        try:
            report = await presence_sweep()
            if report.sockets_removed or report.status_changes or report.members_left:
                logger.info("presence sweep: %s", report)
        except Exception:
            logger.exception("presence sweep failed")


def process_sizes() -> dict[str, int]:
    """How many entries this process's presence state holds (for /health): typing
    debounces and timers in flight, and the in-memory store's (embedded mode)."""
    sizes = {
        "typingDebounces": SocketTyping.debounces(),
        "presenceTasks": len(_tasks),
        "presenceEventKeys": len(_events.last),
        "presenceFlushes": len(_events.flushes),
        "presenceLeaves": len(_leaves),
        "presenceSettling": len(_settling),
    }
    store = presence_store()
    if hasattr(store, "sizes"):
        sizes.update(store.sizes())
    return sizes


class SocketTyping:
    """One socket's typing: `start` forwarded at most once a second per user and room,
    `stop` sent on the user's behalf after the last `start`, or on message/leave/close.
    Lives in process memory only (no store, no database)."""

    _forwarded: dict[
        tuple[int, str], float
    ] = {}  # (user id, slug) -> loop time of the last forwarded start

    def __init__(self, user_id: int, username: str) -> None:
        self.user_id = user_id
        self.username = username
        self.timers: dict[str, asyncio.Task] = {}  # slug -> auto-stop task

    async def start(self, slug: str) -> None:
        conf = settings.VOICEFLOW
        loop = asyncio.get_running_loop()
        key = (self.user_id, slug)
        timer = self.timers.pop(slug, None)
        if timer is not None:
            timer.cancel()
        self.timers[slug] = _spawn(self._expire(slug, conf["TYPING_STOP_AFTER"]))
        last = self._forwarded.get(key)
        if last is None or loop.time() - last >= conf["TYPING_FORWARD_INTERVAL"]:
            self._forwarded[key] = loop.time()
            await broadcast.typing_changed(slug, self.user_id, self.username, "start")

    async def stop(self, slug: str) -> None:
        """Send `stop` if this socket is typing in `slug`; otherwise nothing."""
        timer = self.timers.pop(slug, None)
        if timer is None:
            return
        timer.cancel()
        await self._stopped(slug)

    async def stop_all(self) -> None:
        for slug in list(self.timers):
            await self.stop(slug)

    async def _expire(self, slug, delay):
        await asyncio.sleep(delay)
        self.timers.pop(slug, None)
        try:
            await self._stopped(slug)
        except Exception:
            logger.exception("typing stop in %s failed", slug)

    async def _stopped(self, slug):
        self._forwarded.pop((self.user_id, slug), None)
        await broadcast.typing_changed(slug, self.user_id, self.username, "stop")

    @classmethod
    def debounces(cls) -> int:
        """How many user+room typing states this process holds (for /health)."""
        return len(cls._forwarded)

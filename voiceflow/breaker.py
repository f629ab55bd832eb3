"""A circuit breaker for Redis: while it is known to be down, nothing waits for it.

The first command that finds Redis unreachable opens the breaker (`failed`). From
then on callers take their fallback at once (`down` is the one check on the hot
path) instead of each waiting for a connection to be refused or to time out; one
probe (PING) per REDIS_RETRY_INTERVAL asks whether it answers again, and closes the
breaker when it does. On an event loop the probe runs in the background, so no frame
waits for it; in a thread (sync views) the caller that is due probes itself.

One breaker per process (Redis is one server for all its loops and threads); `outages`
counts the openings, so a watcher can tell that Redis was away since it last looked.
"""

import asyncio
import logging
import time
from collections.abc import Awaitable, Callable

import redis
from django.conf import settings

from voiceflow.redis import redis_sync_client
from voiceflow.runtime import runtime

logger = logging.getLogger(__name__)

# Errors that say the server cannot be reached (a bad command says nothing of it).
UNREACHABLE = (redis.exceptions.ConnectionError, redis.exceptions.TimeoutError)


class RedisDown(redis.exceptions.ConnectionError):
    """Raised instead of calling Redis while the breaker is open."""


async def _ping() -> None:
    await runtime().redis().ping()


def _ping_sync() -> None:
    redis_sync_client().ping()


class CircuitBreaker:
    """`down` after a failure until a probe gets an answer; see the module's doc."""

    def __init__(
        self,
        probe: Callable[[], Awaitable[None]] = _ping,
        probe_sync: Callable[[], None] = _ping_sync,
        clock: Callable[[], float] = time.monotonic,
        interval: float | None = None,
    ):
        self.probe = probe
        self.probe_sync = probe_sync
        self.clock = clock
        self._interval = interval  # None: REDIS_RETRY_INTERVAL, read when used
        self.reset()

    def reset(self) -> None:
        """Closed, as at start (tests: every test starts with Redis up)."""
        self.down = False
        self.outages = 0
        self.down_since = 0.0
        self.retry_at = 0.0
        self.probing: asyncio.Task | None = None

    @property
    def interval(self) -> float:
        if self._interval is None:
            return settings.REDIS_RETRY_INTERVAL
        return self._interval

    def failed(self, error: BaseException | None = None) -> None:
        """Redis did not answer: open (or keep open) the breaker."""
        now = self.clock()
        self.retry_at = now + self.interval
        if self.down:
            return
        self.down = True
        self.outages += 1
        self.down_since = now
        logger.warning(
            "redis unreachable (%r): falling back until it answers",
            error,
            extra={"event": "redis_down"},
        )

    def recovered(self) -> None:
        """Redis answered: close the breaker."""
        if not self.down:
            return
        self.down = False
        logger.warning(
            "redis answers again after %.1f s",
            self.clock() - self.down_since,
            extra={"event": "redis_back"},
        )

    def allows(self) -> bool:
        """May the caller use Redis now? True while closed. While open, False, and a
        probe starts when one is due (on a loop in the background; in a thread here,
        the caller then using Redis if it answered)."""
        if not self.down:
            return True
        now = self.clock()
        if now < self.retry_at or self._probe_running():
            return False
        self.retry_at = now + self.interval
        try:
            loop = asyncio.get_running_loop()
        except RuntimeError:
            self._run_probe_sync()
            return not self.down
        self.probing = loop.create_task(self._run_probe())
        return False

    def check(self) -> None:
        """Raise RedisDown unless `allows()`."""
        if not self.allows():
            raise RedisDown("Redis is unreachable (circuit open).")

    def _probe_running(self) -> bool:
        task = self.probing
        # A task of a closed loop never ends (tests close a loop per test).
        return task is not None and not task.done() and not task.get_loop().is_closed()

    async def _run_probe(self) -> None:
        try:
            await self.probe()
        except Exception as error:
            self.failed(error)
        else:
            self.recovered()

    def _run_probe_sync(self) -> None:
        try:
            self.probe_sync()
        except Exception as error:
            self.failed(error)
        else:
            self.recovered()


redis_breaker = CircuitBreaker()


def redis_usable() -> bool:
    """Whether to ask Redis: REDIS_URL is set and Redis is not known to be down."""
    return bool(settings.REDIS_URL) and (
        not redis_breaker.down or redis_breaker.allows()
    )

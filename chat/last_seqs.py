"""The stored `last_seq` of the rooms this process's sockets joined, for their pongs.

Every pong tells the client the last seq stored in each of its rooms, so a client
that missed a room's last messages (and would otherwise wait for the next one) knows
within a heartbeat. One read serves the pongs of every socket of the process: when a
pong needs the values and the last read started LAST_SEQ_MAX_AGE seconds ago or more,
one statement reads every room joined here; pings that come meanwhile wait for that
same read. No pings, no reads.
"""

import asyncio
import logging
from collections.abc import Iterable

from django.conf import settings

from voiceflow.runtime import runtime

from . import selectors, sockets

logger = logging.getLogger(__name__)


class _LastSeqs:
    """The process's values (its Runtime's): {slug: last_seq} and when they were
    read."""

    def __init__(self):
        self.values = {}
        self.covered = frozenset()  # the slugs the last read asked for
        self.read_at = float("-inf")  # loop time at which the last read started
        self.failed = False
        self.reading = None  # the read in flight, shared by the pings waiting for it

    def stale(self, now):
        return now - self.read_at >= settings.VOICEFLOW["LAST_SEQ_MAX_AGE"]

    def missing(self, slugs):
        """True if a room was first joined here after the last read started."""
        return not self.covered.issuperset(slugs)

    async def fresh(self, now):
        """Once the read in flight, or a new one started now, is over."""
        if self.reading is None:
            self.reading = asyncio.ensure_future(self.read(now))
        # Shielded: a socket closing while it waits must not cancel everyone's read.
        await asyncio.shield(self.reading)

    async def read(self, started):
        slugs = sockets.rooms_joined()
        try:
            values = await selectors.room_last_seqs_aget(slugs)
        except Exception:
            # The pongs go without last_seq until a later read works; that read waits
            # LAST_SEQ_MAX_AGE, so a database outage is not a query per ping.
            logger.warning("last_seq read failed", exc_info=True)
            self.failed = True
        else:
            self.values, self.failed = values, False
        finally:
            self.covered = frozenset(slugs)
            self.read_at = started
            self.reading = None


async def last_seqs_get(*, slugs: Iterable[str]) -> dict[str, int] | None:
    """{slug: stored last_seq} of these rooms (joined by a socket of this process),
    read at most LAST_SEQ_MAX_AGE seconds before the call unless the database took
    longer to answer; None if the database could not be read."""
    slugs = tuple(slugs)
    loop = asyncio.get_running_loop()
    state = runtime().app_state(_LastSeqs)  # one per process (tests: per test)
    if state.stale(loop.time()) or state.missing(slugs):
        await state.fresh(loop.time())
        if not state.failed and state.missing(slugs):  # joined during that read
            await state.fresh(loop.time())
    if state.failed:
        return None
    values = state.values
    return {slug: values[slug] for slug in slugs if slug in values}

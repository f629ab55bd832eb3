"""This process's live sockets: which users and rooms they serve (for /health).

Plain in-memory bookkeeping, touched only from the event loop's thread.
"""

import asyncio
import logging
import random
from collections import Counter

from voiceflow import metrics

logger = logging.getLogger(__name__)

_users: Counter[int] = Counter()  # user id → live sockets of this process
_rooms: Counter[str] = Counter()  # room slug → sockets of this process that joined it
_connections = 0
_consumers: set = set()  # this process's signed-in consumers, for the drain on shutdown


def socket_opened(user_id):
    global _connections
    _connections += 1
    _users[user_id] += 1
    metrics.SOCKETS.inc()


def socket_closed(user_id):
    global _connections
    _connections -= 1
    _users[user_id] -= 1
    if _users[user_id] <= 0:
        del _users[user_id]
    metrics.SOCKETS.dec()


def room_joined(slug):
    _rooms[slug] += 1


def room_left(slug):
    _rooms[slug] -= 1
    if _rooms[slug] <= 0:
        del _rooms[slug]


def rooms_joined():
    """The slugs of the rooms that sockets of this process joined."""
    return list(_rooms)


def counts():
    """{"connections", "users", "rooms"} of this process."""
    return {"connections": _connections, "users": len(_users), "rooms": len(_rooms)}


def sizes():
    """How many entries this module's indexes hold (for /health)."""
    return {
        "socketUsers": len(_users),
        "socketRooms": len(_rooms),
        "consumers": len(_consumers),
    }


def output_bytes():
    """Bytes this process holds for its sockets that their clients have not read."""
    return sum(consumer.queued_bytes() for consumer in list(_consumers))


def consumer_opened(consumer):
    _consumers.add(consumer)


def consumer_closed(consumer):
    _consumers.discard(consumer)


async def sockets_presence_restore(batch=100):
    """Register every live socket of this process in presence afresh (Redis came back
    empty, or answers again after an outage), `batch` at a time."""
    consumers = list(_consumers)
    for start in range(0, len(consumers), batch):
        chunk = consumers[start : start + batch]
        await asyncio.gather(
            *(c.presence_restore(resync=True) for c in chunk), return_exceptions=True
        )


async def sockets_drain(window, timeout):
    """Close every socket of this process with 1012, each at a random moment within
    `window` seconds (so reconnects spread over the other processes), once its
    in-flight frame is handled; wait until all are released, at most `timeout` s."""
    consumers = list(_consumers)
    logger.info(
        "draining %s sockets over %s s",
        len(consumers),
        window,
        extra={"event": "drain_started", "sockets": len(consumers)},
    )

    async def drain_one(consumer):
        await asyncio.sleep(random.uniform(0, window))
        await consumer.drain()

    async def drained():
        await asyncio.gather(*map(drain_one, consumers), return_exceptions=True)
        while _consumers:  # released once the client answered the close
            await asyncio.sleep(0.05)

    try:
        await asyncio.wait_for(drained(), timeout)
    except TimeoutError:
        logger.warning("drain timed out with %s sockets left", len(_consumers))

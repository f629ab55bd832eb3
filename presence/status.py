"""A user's presence status: one pure function of timestamps and settings."""

from collections.abc import Mapping
from typing import Any, NamedTuple

ONLINE, AWAY, OFFLINE = "online", "away", "offline"


class SocketState(NamedTuple):
    """One socket as the store knows it: last frame time and its `status: away` flag."""

    seen_at: float
    away: bool = False


class UserPresence(NamedTuple):
    """Everything the store knows about one user (times are epoch seconds).

    Immutable tuples, not dataclasses: a room read builds one per member, and a
    frozen dataclass takes several times as long to build.
    """

    user_id: int
    username: str = ""
    active_at: float | None = None  # last message, typing, join or `status: online`
    announced: str = OFFLINE  # the status last sent in a `presence` event
    left_at: float | None = None  # when their last socket went
    sockets: tuple = ()  # SocketState of every socket not yet removed
    rooms: frozenset = frozenset()  # rooms they are present in


def socket_expiry(conf: Mapping[str, Any]) -> float:
    """Seconds of silence after which the sweep treats a socket as dead.

    Last-seen times reach the store at most every touch interval, so the sweep waits
    that much longer than the holding process, which closes the socket at DEAD_AFTER.
    """
    return conf["DEAD_AFTER"] + conf["PRESENCE_TOUCH_INTERVAL"]


def presence_status(user: UserPresence, now: float, conf: Mapping[str, Any]) -> str:
    """`online`, `away` or `offline` for `user` at time `now` under settings `conf`."""
    live = [s for s in user.sockets if now - s.seen_at < socket_expiry(conf)]
    if live:
        idle = user.active_at is None or now - user.active_at >= conf["AWAY_AFTER"]
        return AWAY if idle or all(s.away for s in live) else ONLINE
    # No live socket: within the grace period nothing changes (a reload must not flap).
    gone_at = max([user.left_at or 0.0, *(s.seen_at for s in user.sockets)])
    if user.announced != OFFLINE and now - gone_at < conf["OFFLINE_GRACE"]:
        return user.announced
    return OFFLINE

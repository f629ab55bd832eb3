"""Reads: who is present in a room, with what status, and deployment totals."""

from collections.abc import Iterable
from typing import Any

from django.conf import settings

from voiceflow.breaker import UNREACHABLE

from . import services
from .status import presence_status
from .store import presence_store


async def room_presence(slug: str, now: float | None = None) -> list[dict[str, Any]]:
    """Users present in `slug`: [{"username", "status", "connections"}].

    Present: a live socket joined to it, or in the grace period after their last one
    there went (0 connections, the status they had) until `member_left` is sent.
    """
    now = services.clock() if now is None else now
    conf = settings.VOICEFLOW
    rows = await presence_store().room_users(slug)
    return sorted(
        (
            {
                "username": user.username,
                "status": presence_status(user, now, conf),
                "connections": connections,
            }
            for user, connections in rows
        ),
        key=lambda row: row["username"],
    )


async def room_members(slug: str, now: float | None = None) -> list[dict[str, str]]:
    """`joined.members`: the users `room_presence` lists, as {"username", "status"};
    none while Redis is unreachable (presence pauses)."""
    try:
        rows = await room_presence(slug, now)
    except UNREACHABLE:
        return []
    return [{"username": row["username"], "status": row["status"]} for row in rows]


async def room_online_counts(slugs: Iterable[str]) -> dict[str, int]:
    """{slug: number of users `room_presence` lists} for each slug; {} (no counts)
    while Redis is unreachable."""
    try:
        return await presence_store().room_counts(list(slugs))
    except UNREACHABLE:
        return {}


async def presence_totals() -> dict[str, int]:
    """Deployment-wide counts for /health: users online and away, live sockets, rooms
    with someone present: {"online", "away", "sockets", "rooms"}."""
    return await presence_store().totals()

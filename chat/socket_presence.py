"""A socket's presence: registered at connect, touched by its frames, ended at close.

Best effort once connected: a failing presence store is logged, never a refused frame
(except `leave`, whose reply says the socket left the room's presence).
"""

import asyncio
import logging

from django.conf import settings

from presence import selectors as presence_selectors
from presence import services as presence_services

from . import sockets

logger = logging.getLogger(__name__)


class SocketPresence:
    """One socket (`sid`) of a user in the presence store, with its typing."""

    __slots__ = (
        "sid",
        "user_id",
        "username",
        "registered",
        "away",
        "typing",
        "last_frame_at",
        "touched_at",
        "active_at",
        "dead_after",
        "touch_interval",
    )

    def __init__(self, sid: str, user_id: int, username: str) -> None:
        self.sid = sid
        self.user_id = user_id
        self.username = username
        self.registered = False
        self.away = False  # this socket's last `status` frame said away
        self.typing = presence_services.SocketTyping(user_id, username)

    async def register(self) -> bool:
        """Count this socket in at connect; False when the user has no slot left."""
        return await presence_services.presence_connect(
            sid=self.sid, user_id=self.user_id, username=self.username
        )

    def start(self) -> None:
        """Registered: from now on its frames keep it alive (the dead timeout)."""
        self.registered = True
        self.last_frame_at = self.touched_at = self.active_at = (
            asyncio.get_running_loop().time()
        )
        # Read once: each frame would otherwise look them up in the settings.
        conf = settings.VOICEFLOW
        self.dead_after = conf["DEAD_AFTER"]
        self.touch_interval = conf["PRESENCE_TOUCH_INTERVAL"]
        presence_services.embedded_sweeper_start()
        presence_services.presence_watch_start(sockets.sockets_presence_restore)

    def heard(self) -> None:
        """A frame came: the socket is alive."""
        self.last_frame_at = asyncio.get_running_loop().time()

    def silent_at(self) -> float | None:
        """The loop time at which the socket is dead unless a frame comes first; None
        once it left presence (it is closing)."""
        return self.last_frame_at + self.dead_after if self.registered else None

    async def touch(self, active: bool) -> bool:
        """Tell the store of frames once per touch interval; False if it lost us."""
        # Lost: Redis restarted empty, or the socket was swept while alive (restore).
        if not self.registered:
            return (
                True  # closed for silence: frames that raced the close change nothing
            )
        now = self.last_frame_at
        interval = self.touch_interval
        active = active and now - self.active_at >= interval
        if not active and now - self.touched_at < interval:
            return True
        self.touched_at = now
        if active:
            self.active_at = now
        try:
            return await presence_services.presence_touch(
                sid=self.sid, user_id=self.user_id, active=active
            )
        except Exception:
            logger.warning("presence touch failed", exc_info=True)
            return True

    async def restore(self, rooms: list[str], resync: bool = False) -> bool:
        """Be in presence again (`resync`: afresh); False if no slot is left."""
        if not self.registered:
            return True
        try:
            return await presence_services.presence_restore(
                sid=self.sid,
                user_id=self.user_id,
                username=self.username,
                rooms=rooms,
                away=self.away,
                resync=resync,
            )
        except Exception:
            logger.warning("presence restore failed", exc_info=True)
            return True

    async def room_enter(self, slug: str) -> list[dict]:
        """Be present in the room; its members. Best effort: messages matter more."""
        try:
            await presence_services.presence_room_enter(
                sid=self.sid, user_id=self.user_id, username=self.username, slug=slug
            )
            return await presence_selectors.room_members(slug)
        except Exception:
            logger.warning("presence of a join into %s failed", slug, exc_info=True)
            return []

    async def room_exit(self, slug: str) -> None:
        """No longer present in the room."""
        await presence_services.presence_room_exit(
            sid=self.sid, user_id=self.user_id, username=self.username, slug=slug
        )

    async def set_away(self, away: bool) -> None:
        """This socket's `status` frame: away or online."""
        self.away = away
        await presence_services.presence_set_away(sid=self.sid, away=away)

    async def end(self) -> None:
        """Leave presence (a normal disconnect: the grace period runs), once."""
        if not self.registered:
            return
        self.registered = False
        try:
            await self.typing.stop_all()
            await presence_services.presence_disconnect(sid=self.sid)
        except Exception:
            logger.warning("presence cleanup of %s failed", self.sid, exc_info=True)

"""The chat socket at /ws/chat/: one per browser tab, any number of rooms."""

import asyncio
import logging
import time
import uuid
from collections import deque

import orjson
from channels.db import database_sync_to_async
from channels.generic.websocket import AsyncWebsocketConsumer
from django.conf import settings
from django.db import DatabaseError

from presence import selectors as presence_selectors
from presence import services as presence_services

from . import broadcast, selectors, services
from .auth import origin_allowed, socket_user
from .errors import ChatError, Forbidden, Invalid, NotFound, Unavailable
from .models import Room
from .payloads import message_data

logger = logging.getLogger(__name__)

CLOSE_TOO_LARGE = 1009
CLOSE_SERVICE_DOWN = 1013
CLOSE_UNAUTHENTICATED = 4401
CLOSE_ORIGIN_REFUSED = 4403
CLOSE_SILENT = 4408
CLOSE_TOO_MANY = 4429


def _room_slug(frame):
    slug = frame.get("room")
    if not isinstance(slug, str) or not slug:
        raise Invalid("room is required.", field="room")
    return slug


def _optional_seq(frame, name):
    value = frame.get(name)
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, int) or value < 0:
        raise Invalid(f"{name} must be a non-negative integer.", field=name)
    return value


@database_sync_to_async
def _join(user, slug, since):
    """Membership plus what the socket missed, in one trip to the database."""
    room = selectors.room_get(slug)
    services.room_join(user=user, room=room)
    missed, truncated = [], False
    if since is not None:
        rows, truncated = selectors.messages_after(
            room.id, since, settings.VOICEFLOW["MISSED_LIMIT"]
        )
        missed = [message_data(m, room_slug=room.slug) for m in rows]
    last_seq = max(room.last_seq, missed[-1]["seq"] if missed else 0)
    return room, last_seq, missed, truncated


@database_sync_to_async
def _room_exists(slug):
    return Room.objects.filter(slug=slug).exists()


class ChatConsumer(AsyncWebsocketConsumer):
    """Parses frames, calls services, replies; layer events are forwarded as is."""

    user = None
    presence_registered = False

    async def connect(self):
        # Accept first: a refused handshake reaches a browser as 1006 ("reconnect").
        await self.accept()
        self.rooms = {}
        if not origin_allowed(self.scope):
            await self.close(code=CLOSE_ORIGIN_REFUSED)
            return
        try:
            user = await socket_user(self.scope)
        except Exception:
            logger.warning("ticket check failed: service unavailable", exc_info=True)
            await self.close(code=CLOSE_SERVICE_DOWN)
            return
        if user is None:
            await self.close(code=CLOSE_UNAUTHENTICATED)
            return
        self.connection_id = uuid.uuid4().hex
        try:
            registered = await presence_services.presence_connect(
                sid=self.connection_id, user_id=user.id, username=user.username
            )
        except Exception:
            logger.warning("presence store unavailable at connect", exc_info=True)
            await self.close(code=CLOSE_SERVICE_DOWN)
            return
        if not registered:
            await self.close(code=CLOSE_TOO_MANY)
            return
        self.user = user
        self._presence_start()
        conf = settings.VOICEFLOW
        await self.send_frame(
            {
                "type": "hello",
                "user": user.username,
                "connection_id": self.connection_id,
                "heartbeat_interval": conf["HEARTBEAT_INTERVAL"],
                "limits": {
                    "max_frame_bytes": conf["MAX_FRAME_BYTES"],
                    "max_body_chars": conf["MAX_BODY_CHARS"],
                },
            }
        )

    async def disconnect(self, code):
        await self._presence_end()
        for slug in list(getattr(self, "rooms", ())):
            await self._unsubscribe(slug)

    async def receive(self, text_data=None, bytes_data=None):
        limit = settings.VOICEFLOW["MAX_FRAME_BYTES"]
        if text_data is None:
            if len(bytes_data or b"") > limit:
                await self.close(code=CLOSE_TOO_LARGE)
                return
            await self.send_error(Invalid("Frames must be JSON text."), None, None)
            return
        if len(text_data) * 4 > limit and len(text_data.encode()) > limit:
            await self.close(code=CLOSE_TOO_LARGE)
            return
        if self.user is None:
            return  # closing: frames that raced the close are ignored
        self.last_frame_at = asyncio.get_running_loop().time()
        try:
            frame = orjson.loads(text_data)
        except orjson.JSONDecodeError:
            await self.send_error(Invalid("Frame is not valid JSON."), None, None)
            return
        if not isinstance(frame, dict):
            await self.send_error(Invalid("Frame is not a JSON object."), None, None)
            return
        kind = frame.get("type")
        handler = self.frame_handlers.get(kind) if isinstance(kind, str) else None
        ref = frame.get("client_id") if isinstance(frame.get("client_id"), str) else None
        request = kind if isinstance(kind, str) else None
        typing_start = kind == "typing" and frame.get("state") == "start"
        await self._presence_touch(active=kind == "message" or typing_start)
        if handler is None:
            await self.send_error(Invalid(f"Unknown frame type {kind!r}."), request, ref)
            return
        try:
            await handler(self, frame)
        except ChatError as error:
            await self.send_error(error, request, ref)
        except DatabaseError:
            logger.warning("%s frame failed: database unavailable", kind, exc_info=True)
            await self.send_error(
                Unavailable("The database is unavailable; retry later."), request, ref
            )
        except Exception:
            logger.exception("%s frame failed", kind)
            await self.send_error(
                Unavailable("The server could not handle this frame; retry later."),
                request,
                ref,
            )

    # Client frames

    async def frame_join(self, frame):
        slug = _room_slug(frame)
        since = _optional_seq(frame, "since")
        if not selectors.is_room_slug(slug):
            raise NotFound(f"No room {slug!r}.", field="room")
        # Subscribe before reading what was missed, so nothing falls in between.
        await broadcast.room_subscribe(self.channel_name, slug)
        try:
            room, last_seq, missed, truncated = await _join(self.user, slug, since)
        except Exception:
            if slug not in self.rooms:
                await broadcast.room_unsubscribe(self.channel_name, slug)
            raise
        self.rooms[slug] = room
        await presence_services.presence_room_enter(
            sid=self.connection_id,
            user_id=self.user.id,
            username=self.user.username,
            slug=slug,
        )
        await self.send_frame(
            {
                "type": "joined",
                "room": slug,
                "last_seq": last_seq,
                "members": await presence_selectors.room_members(slug),
                "missed": missed,
                "truncated": truncated,
            }
        )

    async def frame_leave(self, frame):
        slug = _room_slug(frame)
        if slug in self.rooms:
            await self.socket_typing.stop(slug)
            await self._unsubscribe(slug)
            await presence_services.presence_room_exit(
                sid=self.connection_id, username=self.user.username, slug=slug
            )
        await self.send_frame({"type": "left", "room": slug})

    async def frame_message(self, frame):
        room = await self._joined_room(frame)
        result = await services.message_send(
            user=self.user,
            room=room,
            body=frame.get("body"),
            client_id=frame.get("client_id"),
            ensure_membership=False,
        )
        await self.socket_typing.stop(room.slug)
        message = result.message
        await self.send_frame(
            {
                "type": "ack",
                "client_id": message["client_id"],
                "id": message["id"],
                "seq": message["seq"],
                "room": message["room"],
                "created_at": message["created_at"],
            }
        )

    async def frame_typing(self, frame):
        room = await self._joined_room(frame)
        state = frame.get("state")
        if state not in ("start", "stop"):
            raise Invalid("state must be 'start' or 'stop'.", field="state")
        if state == "start":
            await self.socket_typing.start(room.slug)
        else:
            await self.socket_typing.stop(room.slug)

    async def frame_ping(self, frame):
        ts = frame.get("ts")
        if ts is not None and (isinstance(ts, bool) or not isinstance(ts, (int, float))):
            raise Invalid("ts must be a number.", field="ts")
        await self.send_frame(
            {"type": "pong", "ts": ts, "server_ts": int(time.time() * 1000)}
        )

    async def frame_status(self, frame):
        status = frame.get("status")
        if status not in ("online", "away"):
            raise Invalid("status must be 'online' or 'away'.", field="status")
        await presence_services.presence_set_away(
            sid=self.connection_id, away=status == "away"
        )

    frame_handlers = {
        "join": frame_join,
        "leave": frame_leave,
        "message": frame_message,
        "typing": frame_typing,
        "ping": frame_ping,
        "status": frame_status,
    }

    # Channel layer events

    async def chat_message(self, event):
        await self.send(text_data=event["text"])

    async def presence(self, event):
        # Sent to each shared room's group: a socket in several forwards it once.
        if event["id"] in self.presence_seen:
            return
        self.presence_seen.append(event["id"])
        await self.send(text_data=event["text"])

    async def member_joined(self, event):
        await self.send(text_data=event["text"])

    async def member_left(self, event):
        await self.send(text_data=event["text"])

    async def typing(self, event):
        if event["user_id"] != self.user.id:  # never echoed to the typist's own sockets
            await self.send(text_data=event["text"])

    # Presence of this socket

    def _presence_start(self):
        self.presence_registered = True
        self.presence_seen = deque(maxlen=64)
        self.socket_typing = presence_services.SocketTyping(
            self.user.id, self.user.username
        )
        self.last_frame_at = self.touched_at = self.active_at = (
            asyncio.get_running_loop().time()
        )
        self.heartbeat_watch = asyncio.create_task(self._watch_heartbeat())
        presence_services.embedded_sweeper_start()

    async def _presence_touch(self, active):
        """Tell the store about frames at most once per touch interval, not each."""
        if not self.presence_registered:
            return  # closed for silence: frames that raced the close change nothing
        now = self.last_frame_at
        interval = settings.VOICEFLOW["PRESENCE_TOUCH_INTERVAL"]
        active = active and now - self.active_at >= interval
        if not active and now - self.touched_at < interval:
            return
        self.touched_at = now
        if active:
            self.active_at = now
        try:
            known = await presence_services.presence_touch(
                sid=self.connection_id, user_id=self.user.id, active=active
            )
        except Exception:
            logger.warning("presence touch failed", exc_info=True)
            return
        if not known:  # swept as dead (the store lost it): have the client reconnect
            await self._presence_end()
            await self.close(code=CLOSE_SILENT)

    async def _watch_heartbeat(self):
        """Close the socket with 4408 once no frame came for the dead timeout."""
        loop = asyncio.get_running_loop()
        while True:
            silent = loop.time() - self.last_frame_at
            dead_after = settings.VOICEFLOW["DEAD_AFTER"]
            if silent >= dead_after:
                break
            await asyncio.sleep(dead_after - silent)
        # A dead client may never answer the close: leave presence first.
        await self._presence_end()
        await self.close(code=CLOSE_SILENT)

    async def _presence_end(self):
        if not self.presence_registered:
            return
        self.presence_registered = False
        watch = self.heartbeat_watch
        if watch is not asyncio.current_task():
            watch.cancel()
        try:
            await self.socket_typing.stop_all()
            await presence_services.presence_disconnect(sid=self.connection_id)
        except Exception:
            logger.warning(
                "presence cleanup of %s failed", self.connection_id, exc_info=True
            )

    # Helpers

    async def _joined_room(self, frame):
        slug = _room_slug(frame)
        room = self.rooms.get(slug)
        if room is None:
            if not selectors.is_room_slug(slug) or not await _room_exists(slug):
                raise NotFound(f"No room {slug!r}.", field="room")
            raise Forbidden(f"Join {slug!r} before using it.", field="room")
        return room

    async def _unsubscribe(self, slug):
        self.rooms.pop(slug, None)
        try:
            await broadcast.room_unsubscribe(self.channel_name, slug)
        except Exception:
            logger.warning("unsubscribe from %s failed", slug, exc_info=True)

    async def send_frame(self, frame):
        await self.send(text_data=orjson.dumps(frame).decode())

    async def send_error(self, error, request, ref):
        frame = {
            "type": "error",
            "code": error.code,
            "detail": error.detail,
            "request": request,
            "ref": ref,
        }
        if error.retry_after is not None:
            frame["retry_after"] = error.retry_after
        await self.send_frame(frame)

"""The chat socket at /ws/chat/: one per browser tab, any number of rooms.

An edge: the connect policy, then for each frame decode (chat.frames), authorize,
call a service, reply. Its output is its SocketWriter's, its presence its
SocketPresence's; the server's own closes are chat.socket_closing's.
"""

import asyncio
import logging
import time
import uuid
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

from channels.consumer import get_handler_name
from channels.exceptions import StopConsumer
from channels.generic.websocket import AsyncWebsocketConsumer
from django.conf import settings
from django.db import DatabaseError

from voiceflow import metrics
from voiceflow.runtime.db import socket_database_sync_to_async
from voiceflow.runtime.frames import prebuilt_frame

from . import (
    access,
    broadcast,
    frames,
    last_seqs,
    ratelimit,
    selectors,
    services,
    socket_closing,
    sockets,
)
from .auth import origin_allowed, socket_user
from .errors import ChatError, Forbidden, NotFound, Unavailable
from .models import Room
from .payloads import message_data
from .socket_presence import SocketPresence
from .socket_writer import SocketWriter

# Tests of the write path import it from here.
from .socket_writer import start_eagerly as _start_eagerly  # noqa: F401

logger = logging.getLogger(__name__)

CLOSE_TOO_LARGE = 1009
CLOSE_SERVICE_DOWN = 1013
CLOSE_UNAUTHENTICATED = 4401
CLOSE_ORIGIN_REFUSED = 4403
CLOSE_TOO_MANY = 4429
_UNKNOWN = object()


@dataclass(frozen=True)
class Joined:
    """What a join read: the `joined` frame's data; whether a membership began."""

    room: Room
    last_seq: int
    missed: list
    truncated: bool
    last_change: int
    changed: list
    changed_truncated: bool
    became_member: bool


async def _join(user, slug, since, changes_since):
    """Membership plus what the socket missed, in one trip to the database.

    A first join (no `since`) is the store's (on PostgreSQL one statement on the
    loop); the rest go to a thread.
    """
    if since is None:
        room, became_member = await services.room_join_visible(user=user, slug=slug)
        return Joined(
            room, room.last_seq, [], False, room.last_change, [], False, became_member
        )
    return await _join_with_missed(user, slug, since, changes_since)


@socket_database_sync_to_async
def _join_with_missed(user, slug, since, changes_since):
    room = access.room_get_visible(user=user, slug=slug)
    became_member = services.room_join(user=user, room=room)
    limit = settings.VOICEFLOW["MISSED_LIMIT"]
    missed, truncated = [], False
    changed, changed_truncated = [], False
    last_change = room.last_change
    if since is not None and changes_since is not None:
        # Read before `missed`: what `missed` shows is at least as new.
        rows, changed_truncated = selectors.messages_changed(
            room.id,
            since=since,
            changes_since=changes_since,
            through=last_change,
            limit=limit,
        )
        changed = [message_data(m, room_slug=room.slug) for m in rows]
        if changed_truncated:
            last_change = rows[-1].change_seq  # complete up to here: fetch the rest
    if since is not None:
        rows, truncated = selectors.messages_after(room.id, since, limit)
        missed = [message_data(m, room_slug=room.slug) for m in rows]
    last_seq = max(room.last_seq, missed[-1]["seq"] if missed else 0)
    return Joined(
        room,
        last_seq,
        missed,
        truncated,
        last_change,
        changed,
        changed_truncated,
        became_member,
    )


@socket_database_sync_to_async
def _room_visible(user, slug):
    return access.room_queryset_visible(user=user).filter(slug=slug).exists()


@socket_database_sync_to_async
def _membership_read(user, slug, seq):
    room = access.room_get_visible(user=user, slug=slug)
    return services.membership_read(user=user, room=room, seq=seq)


_mute_until = socket_database_sync_to_async(selectors.mute_until)
_offline_queue_take = socket_database_sync_to_async(services.offline_queue_take)
_message_delete = socket_database_sync_to_async(services.message_delete)


class ChatConsumer(AsyncWebsocketConsumer):
    """Parses frames, calls services, replies; layer events are forwarded as is."""

    user: Any = None
    hub: Any = None
    writer: SocketWriter
    presence: SocketPresence
    # When this user's mute ends: loaded on the first typing frame, then kept fresh by
    # `user.muted` events, so typing costs no database trip. (Posting re-checks it in
    # the seq bump's statement.)
    muted_until: Any = _UNKNOWN  # or datetime | None
    draining = False
    silence_timer: asyncio.TimerHandle | None = None

    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        # Held while one event is handled, so a drain never cuts a frame's ack off.
        self.dispatching = asyncio.Lock()

    async def connect(self):
        # Accept first: a refused handshake reaches a browser as 1006 ("reconnect").
        await self.accept()
        self.rooms = {}
        self.released = False
        self.connection_id = uuid.uuid4().hex
        # Every attempt counts, whatever becomes of it. The ticket is checked (and
        # used up) meanwhile: one wait instead of two, and a refused attempt's ticket
        # is spent like any other.
        client = ratelimit.scope_client_ip(self.scope)
        attempt, user = await asyncio.gather(
            ratelimit.rate_hit("connect", client),
            socket_user(self.scope),
            return_exceptions=True,
        )
        if isinstance(attempt, BaseException):
            raise attempt
        if not attempt.allowed:
            await self._refuse(CLOSE_TOO_MANY, client)
            return
        if not origin_allowed(self.scope):
            await self._refuse(CLOSE_ORIGIN_REFUSED, client)
            return
        if isinstance(user, Exception):
            logger.warning("ticket check failed: service unavailable", exc_info=user)
            await self._refuse(CLOSE_SERVICE_DOWN, client)
            return
        if isinstance(user, BaseException):
            raise user
        if user is None:
            await self._refuse(CLOSE_UNAUTHENTICATED, client)
            return
        self.presence = SocketPresence(self.connection_id, user.id, user.username)
        try:
            # With Redis unreachable, registered once it answers (presence pauses).
            registered = await self.presence.register()
        except Exception:
            logger.warning("presence store unavailable at connect", exc_info=True)
            await self._refuse(CLOSE_SERVICE_DOWN, client, user)
            return
        if not registered:
            await self._refuse(CLOSE_TOO_MANY, client, user)
            return
        self.user = user
        self.user_id = self.writer.user_id = user.pk
        self.writer.connection_id = self.connection_id
        self.presence.start()
        socket_closing.silence_watch(self)
        sockets.socket_opened(user.pk)
        sockets.consumer_opened(self)
        # The hub is in the user-events group: a kick or mute cannot slip past hello.
        self.hub.socket_add(self)
        # Read only while connecting (ticket, cookie, origin, client IP): not kept for
        # the socket's lifetime (1-4 KB each, more with a browser's cookies).
        self.scope["headers"] = ()
        logger.info(
            "socket connected",
            extra={
                "event": "socket_connected",
                "user_id": user.pk,
                "connection_id": self.connection_id,
                "client": client,
            },
        )
        conf = settings.VOICEFLOW
        await self.writer.send_frame(
            {
                "type": "hello",
                "user": user.username,
                "connection_id": self.connection_id,
                "heartbeat_interval": conf["HEARTBEAT_INTERVAL"],
                "limits": {
                    "max_frame_bytes": conf["MAX_FRAME_BYTES"],
                    "max_body_chars": conf["MAX_BODY_CHARS"],
                    "rates": {
                        name: dict(zip(("limit", "window"), ratelimit.rate(name)))
                        for name in ("message", "typing", "join", "presence")
                    },
                },
            }
        )
        await self._offline_queue_send()

    async def _refuse(self, code, client, user=None):
        """Close a socket that may not connect; the log says who and why."""
        logger.info(
            "socket refused",
            extra={
                "event": "socket_refused",
                "user_id": user and user.pk,
                "connection_id": self.connection_id,
                "client": client,
                "code": code,
            },
        )
        await self.close(code=code)

    async def _offline_queue_send(self):
        """`offline_messages` right after hello, if the offline queue holds any."""
        try:
            # Read with the user's row when the socket came with a ticket.
            marked = getattr(self.user, "has_offline_mark", None)
            if marked is None:
                marked = await selectors.offline_mark_aexists(self.user.pk)
            if marked is False:
                return  # the common case, checked without a transaction
            queue = await _offline_queue_take(user=self.user)
        except Exception:
            # The mark stays (the transaction rolled back): the next connect gets it.
            logger.warning("offline queue unavailable at connect", exc_info=True)
            return
        if queue and (queue.messages or queue.dropped):
            await self.writer.send_frame(
                {
                    "type": "offline_messages",
                    "messages": queue.messages,
                    "dropped": queue.dropped,
                }
            )

    async def __call__(self, scope, receive, send):
        # AsyncConsumer.__call__ without a layer channel per socket: room and user
        # events reach this process once, through its hub (deliver, user_event).
        self.scope = scope
        self.base_send = send
        conf = settings.VOICEFLOW
        self.writer = SocketWriter(
            send,
            scope.get("extensions") or {},
            conf["SOCKET_SOFT_BYTES"],
            conf["SOCKET_HARD_BYTES"],
        )
        # The hub's broadcasts go straight to the writer: no call in between.
        self.deliver = self.writer.deliver
        try:
            self.hub = await broadcast.hub()
            while True:
                await self.dispatch(await receive())
        except StopConsumer:
            pass
        finally:
            # Whatever ended the dispatch loop (an error, a cancelled task), the socket
            # leaves its groups and the registry.
            await self._release(1006)

    async def disconnect(self, code):
        await self._release(code)

    async def drain(self):
        """Server shutdown: close with 1012 between frames (socket_closing.drain)."""
        await socket_closing.drain(self)

    async def _release(self, code):
        """Leave every group and the socket registry, once; log the close code."""
        if getattr(self, "released", True):
            return
        self.released = True
        socket_closing.silence_unwatch(self)
        if self.user is not None:
            await self.presence.end()
        rooms = list(self.rooms)
        for slug in rooms:
            await self._unsubscribe(slug)
        if self.user is None:
            return
        self.hub.socket_remove(self)
        sockets.socket_closed(self.user.pk)
        sockets.consumer_closed(self)
        logger.info(
            "socket disconnected",
            extra={
                "event": "socket_disconnected",
                "user_id": self.user.pk,
                "connection_id": self.connection_id,
                "code": self.writer.close_code or code,
                "rooms": len(rooms),
            },
        )

    async def dispatch(self, message):
        # channels' dispatch hops to the sync thread (close_old_connections) before
        # every event, i.e. per delivered broadcast per socket; our database work
        # all goes through database_sync_to_async, which does that check itself.
        handler = getattr(self, get_handler_name(message), None)
        if handler is None:
            raise ValueError(f"No handler for message type {message['type']}")
        # Held while an event is handled, so a drain closes only between frames.
        async with self.dispatching:
            self.writer.hold()
            try:
                await handler(message)
            finally:
                self.writer.release()

    async def close(self, code=None, reason=None):
        self.writer.closing(code)
        await super().close(code=code, reason=reason)

    async def receive(self, text_data=None, bytes_data=None):
        if text_data is None:
            if frames.frame_too_large(bytes_data or b""):
                await self.close(code=CLOSE_TOO_LARGE)
            else:
                await self._refused(frames.binary_refusal())
            return
        if frames.frame_too_large(text_data):
            await self.close(code=CLOSE_TOO_LARGE)
            return
        if self.user is None or self.draining:
            # Closing: frames that raced the close are ignored (unacked, so resent).
            return
        self.presence.heard()
        frame = frames.frame_decode(text_data)
        if isinstance(frame, frames.Refusal):
            await self._refused(frame)
            return
        kind = frame.kind
        metrics.frame_received(kind)
        if not await self.presence.touch(frame.active):
            await self.presence_restore()
        try:
            await self.frame_handlers[kind](self, frame)
        except Exception as error:
            await self._failed(error, kind, frame.ref)

    async def _refused(self, refusal):
        """Reply to a refused frame; presence hears of it as of any frame."""
        if refusal.counted:
            metrics.frame_received(refusal.request)
        if refusal.heard and not await self.presence.touch(refusal.active):
            await self.presence_restore()
        try:
            if refusal.room is not None:
                await self._joined_room(refusal.room)  # not joined is said first
        except Exception as error:
            await self._failed(error, refusal.request, refusal.ref)
            return
        await self.send_error(refusal.error, refusal.request, refusal.ref)

    async def _failed(self, error, request, ref):
        """The error reply to a frame that raised `error`."""
        if isinstance(error, ChatError):
            await self.send_error(error, request, ref)
        elif isinstance(error, DatabaseError):
            logger.warning(
                "%s frame failed: database unavailable", request, exc_info=error
            )
            await self.send_error(
                Unavailable("The database is unavailable; retry later."), request, ref
            )
        else:
            logger.error("%s frame failed", request, exc_info=error)
            await self.send_error(
                Unavailable("The server could not handle this frame; retry later."),
                request,
                ref,
            )

    # Client frames

    async def frame_join(self, frame: frames.Join):
        slug = frame.room
        if not selectors.is_room_slug(slug):
            raise NotFound(f"No room {slug!r}.", field="room")
        if slug in self.rooms:  # a re-join on this socket (a reconnect's is free)
            await self._presence_frame_hit()
        hit = await self._join_hit(slug)
        # Subscribe before reading what was missed, so nothing falls in between.
        await self.hub.room_add(slug, self)
        try:
            join = await _join(self.user, slug, frame.since, frame.changes_since)
        except Exception:
            if slug not in self.rooms:
                await self.hub.room_remove(slug, self)
            raise
        if slug not in self.rooms:
            sockets.room_joined(slug)
        if hit and not join.became_member:
            await ratelimit.rate_refund(hit)  # a re-join never counts
        self.rooms[slug] = join.room
        await self.writer.send_frame(
            {
                "type": "joined",
                "room": slug,
                "last_seq": join.last_seq,
                "members": await self.presence.room_enter(slug),
                "missed": join.missed,
                "truncated": join.truncated,
                "last_change": join.last_change,
                "changed": join.changed,
                "changed_truncated": join.changed_truncated,
            }
        )

    async def frame_leave(self, frame: frames.Leave):
        slug = frame.room
        if slug in self.rooms:
            await self._presence_frame_hit()
            await self.presence.typing.stop(slug)
            await self._unsubscribe(slug)
            await self.presence.room_exit(slug)
        await self.writer.send_frame({"type": "left", "room": slug})

    async def frame_message(self, frame: frames.Message):
        room = await self._joined_room(frame.room)
        result = await services.message_send(
            user=self.user,
            room=room,
            body=frame.body,
            client_id=frame.client_id,
            ensure_membership=False,
        )
        await self.presence.typing.stop(room.slug)
        message = result.message
        await self.writer.send_frame(
            {
                "type": "ack",
                "client_id": message["client_id"],
                "id": message["id"],
                "seq": message["seq"],
                "room": message["room"],
                "created_at": message["created_at"],
            }
        )

    async def frame_typing(self, frame: frames.Typing):
        room = await self._joined_room(frame.room)
        if self.muted_until is _UNKNOWN:
            self.muted_until = await _mute_until(self.user.pk)
        refusal = selectors.mute_refusal(self.muted_until)
        if refusal:
            raise Forbidden(refusal, field="room")
        if not await self._typing_allowed():
            return  # the contract: over the limit, typing is dropped without an error
        if frame.state == "start":
            await self.presence.typing.start(room.slug)
        else:
            await self.presence.typing.stop(room.slug)

    async def frame_delete(self, frame: frames.Delete):
        room = await self._joined_room(frame.room)
        result = await _message_delete(user=self.user, room=room, message_id=frame.id)
        # The room hears of it after the commit (this socket too, being in the room);
        # a tombstone deleted again is confirmed to the sender alone.
        if not result.deleted:
            await self.writer.send_frame({"type": "message_deleted", **result.event})

    async def frame_edit(self, frame: frames.Edit):
        room = await self._joined_room(frame.room)
        result = await services.message_edit(
            user=self.user, room=room, message_id=frame.id, body=frame.body
        )
        # No ack: the room hears `message_edited` after the commit, this socket
        # too; an edit that changes nothing is confirmed to the sender alone.
        if not result.edited:
            await self.writer.send_frame({"type": "message_edited", **result.event})

    async def frame_read(self, frame: frames.Read):
        slug = frame.room
        if not selectors.is_room_slug(slug):
            raise NotFound(f"No room {slug!r}.", field="room")
        state, moved = await _membership_read(self.user, slug, frame.seq)
        # Moved: every socket of the user hears it (this one too, as its reply) from
        # the broadcast; not moved: this socket alone gets the state as it is.
        if not moved:
            await self.writer.send_frame({"type": "read", **state})

    async def frame_ping(self, frame: frames.Ping):
        seqs = await last_seqs.last_seqs_get(slugs=self.rooms) if self.rooms else None
        await self.writer.send_frame(
            {"type": "pong", "ts": frame.ts, "server_ts": int(time.time() * 1000)}
            | ({"last_seq": seqs} if seqs is not None else {})
        )

    async def frame_status(self, frame: frames.Status):
        await self._presence_frame_hit()
        await self.presence.set_away(frame.status == "away")

    frame_handlers = {
        "join": frame_join,
        "leave": frame_leave,
        "message": frame_message,
        "typing": frame_typing,
        "ping": frame_ping,
        "status": frame_status,
        "delete": frame_delete,
        "edit": frame_edit,
        "read": frame_read,
    }

    # Events from the hub (its broadcasts go to `deliver`: the writer's)

    def user_event(self, event):
        if event["type"] == "user.muted":
            until = event["until"]
            self.muted_until = until and datetime.fromtimestamp(until, UTC)
        elif event["type"] == "user.kicked":
            asyncio.ensure_future(socket_closing.kick(self))
        elif event["type"] == "user.frame":
            text = event["text"]
            self.writer.deliver(text, prebuilt_frame(text))
        elif event["type"] == "user.room_removed":
            asyncio.ensure_future(self._room_removed(event["room"]))

    def queued_bytes(self):
        """This socket's output its client has not read yet (for /health)."""
        return self.writer.queued_bytes()

    async def _room_removed(self, slug):
        """The user may no longer be in the room: this socket leaves it at once, so no
        more of its messages, typing or presence reach it, and the client is told."""
        async with self.dispatching:  # between frames, like a kick
            if self.writer.close_code is not None or self.released:
                return
            if slug in self.rooms:
                await self.presence.typing.stop(slug)
                await self._unsubscribe(slug)
                try:
                    await self.presence.room_exit(slug)
                except Exception:
                    logger.warning("presence exit of %s failed", slug, exc_info=True)
            await self.writer.send_frame({"type": "room_removed", "room": slug})

    async def presence_restore(self, resync=False):
        """Be in presence again, with this socket's rooms, without a reconnect
        (`resync`: afresh, even if the store still knows it)."""
        if not await self.presence.restore(list(self.rooms), resync):
            await self.presence.end()
            await self.close(code=CLOSE_TOO_MANY)

    # Helpers

    async def _joined_room(self, slug):
        room = self.rooms.get(slug)
        if room is None:
            if not selectors.is_room_slug(slug) or not await _room_visible(
                self.user, slug
            ):
                raise NotFound(f"No room {slug!r}.", field="room")
            raise Forbidden(f"Join {slug!r} before using it.", field="room")
        return room

    async def _join_hit(self, slug):
        """The join's counted hit; None for a member's join refused.

        A member's join is served without counting, even over the limit, so recovery
        after a reconnect always works; others get the refusal.
        """
        decision = await ratelimit.rate_hit("join", self.user.pk)
        if decision.allowed:
            return decision
        if await socket_database_sync_to_async(selectors.is_member)(self.user, slug):
            return None
        raise decision.refusal("joins")

    async def _presence_frame_hit(self):
        """Count a `status`, a `leave` or a re-join; RateLimited over the limit."""
        await ratelimit.rate_enforce("presence", self.user.pk, "presence changes")

    async def _typing_allowed(self):
        return (await ratelimit.rate_hit("typing", self.user.pk)).allowed

    async def _unsubscribe(self, slug):
        if self.rooms.pop(slug, None) is not None:
            sockets.room_left(slug)
        try:
            await self.hub.room_remove(slug, self)
        except Exception:
            logger.warning("unsubscribe from %s failed", slug, exc_info=True)

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
        metrics.ERRORS.labels(error.code).inc()
        logger.info(
            "frame refused",
            extra={
                "event": "frame_refused",
                "user_id": self.user and self.user.pk,
                "connection_id": getattr(self, "connection_id", None),
                "request": metrics.frame_type(request),
                "code": error.code,
            },
        )
        await self.writer.send_frame(frame)

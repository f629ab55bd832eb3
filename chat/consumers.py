"""The chat socket at /ws/chat/: one per browser tab, any number of rooms."""

import asyncio
import logging
import time
import uuid
from collections import deque
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

import orjson
from channels.consumer import get_handler_name
from channels.exceptions import StopConsumer
from channels.generic.websocket import AsyncWebsocketConsumer
from django.conf import settings
from django.db import DatabaseError

from presence import selectors as presence_selectors
from presence import services as presence_services
from voiceflow import metrics
from voiceflow.db import on_loop, socket_database_sync_to_async
from voiceflow.websocket import FRAME_EXTENSION, OUTPUT_EXTENSION, text_frame

from . import (
    access,
    broadcast,
    frames,
    last_seqs,
    ratelimit,
    selectors,
    services,
    sockets,
)
from .auth import origin_allowed, socket_user
from .errors import ChatError, Forbidden, NotFound, Unavailable
from .models import Room
from .payloads import message_data

logger = logging.getLogger(__name__)

CLOSE_TOO_LARGE = 1009
CLOSE_RESTARTING = 1012
CLOSE_SERVICE_DOWN = 1013
CLOSE_UNAUTHENTICATED = 4401
CLOSE_ORIGIN_REFUSED = 4403
CLOSE_KICKED = 4403
CLOSE_SILENT = 4408
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

    A first join (no `since`) on PostgreSQL is one statement on the loop; the rest
    go to a thread.
    """
    if since is None and on_loop():
        room, became_member = await services.room_join_on_loop(user=user, slug=slug)
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


def _start_eagerly(coro):
    """Run `coro` until it first waits: None if it finished, else a Task finishing it.

    Python 3.12's eager tasks, by hand: a broadcast's write to a socket whose buffer
    has room completes without a task or a trip through the event loop.
    """
    try:
        waiting = coro.send(None)
    except StopIteration:
        return None
    return asyncio.ensure_future(_resume(coro, waiting))


async def _resume(coro, waiting):
    """Drive `coro`, suspended on `waiting` (a future, or None for a bare yield)."""
    try:
        while True:
            if waiting is None:
                await asyncio.sleep(0)
            else:
                # As a Task does with what a coroutine yields: a future still marked
                # blocking refuses another await ("await wasn't used with future").
                waiting._asyncio_future_blocking = False
                try:
                    await waiting
                except Exception:
                    pass  # the coroutine sees the outcome when it resumes
            waiting = coro.send(None)
    except StopIteration as finished:
        return finished.value
    finally:
        coro.close()


class ChatConsumer(AsyncWebsocketConsumer):
    """Parses frames, calls services, replies; layer events are forwarded as is."""

    user: Any = None
    close_code = None
    # When this user's mute ends: loaded on the first typing frame, then kept fresh by
    # `user.muted` events, so typing costs no database trip. (Posting re-checks it in
    # the seq bump's statement.)
    muted_until = _UNKNOWN
    presence_registered = False
    away = False  # this socket's last `status` frame said away
    draining = False
    silenced = False
    hub: Any = None
    # Broadcast frames wait here while a frame is in hand (so `joined` comes before the
    # room's live messages) or while the socket's write buffer is full.
    holds = 0
    pending = None
    pending_bytes = 0  # the size of `pending`
    frame_queue = None  # the server's `voiceflow.frame` extension, if it has it
    output_bytes = None  # the server's `voiceflow.output_bytes`, if it has it

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
        if isinstance(attempt, Unavailable):
            logger.warning("connection limit unchecked: Redis unavailable")
            await self._refuse(CLOSE_SERVICE_DOWN, client)
            return
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
        try:
            registered = await presence_services.presence_connect(
                sid=self.connection_id, user_id=user.id, username=user.username
            )
        except Exception:
            logger.warning("presence store unavailable at connect", exc_info=True)
            await self._refuse(CLOSE_SERVICE_DOWN, client, user)
            return
        if not registered:
            await self._refuse(CLOSE_TOO_MANY, client, user)
            return
        self.user = user
        self.user_id = user.pk
        self._presence_start()
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
        await self.send_frame(
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
            # Read with the user's row when the ticket was redeemed on the loop.
            marked = getattr(self.user, "has_offline_mark", None)
            if marked is None and on_loop():
                marked = await selectors.offline_mark_aexists(self.user.pk)
            if marked is False:
                return  # the common case, checked without a thread or a transaction
            queue = await _offline_queue_take(user=self.user)
        except Exception:
            # The mark stays (the transaction rolled back): the next connect gets it.
            logger.warning("offline queue unavailable at connect", exc_info=True)
            return
        if queue and (queue.messages or queue.dropped):
            await self.send_frame(
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
        extensions = scope.get("extensions") or {}
        self.frame_queue = extensions.get(FRAME_EXTENSION)
        self.output_bytes = extensions.get(OUTPUT_EXTENSION)
        conf = settings.VOICEFLOW
        self.soft_bytes = conf["SOCKET_SOFT_BYTES"]
        self.hard_bytes = conf["SOCKET_HARD_BYTES"]
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
        """Server shutdown: once the frame in hand is handled and acked, leave presence
        (a normal disconnect: the grace period runs, in the sweep if this process is
        gone by then) and close with 1012 so the client reconnects elsewhere."""
        async with self.dispatching:
            if self.released or self.draining:
                return
            self.draining = True
            await self._presence_end()
            await self.close(code=CLOSE_RESTARTING)

    async def _release(self, code):
        """Leave every group and the socket registry, once; log the close code."""
        if getattr(self, "released", True):
            return
        self.released = True
        await self._presence_end()
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
                "code": self.close_code or code,
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
            self.holds += 1
            try:
                await handler(message)
            finally:
                self.holds -= 1
                self._pending_send()

    async def send(self, text_data=None, bytes_data=None, close=False):
        if self.close_code is not None:
            # Closed by us (e.g. 4408): a layer event still in flight must not reach
            # uvicorn, which raises on a send after close and kills the consumer.
            return
        try:
            await super().send(text_data=text_data, bytes_data=bytes_data, close=close)
        except OSError:
            # The client left while this frame was on its way (uvicorn raises
            # ClientDisconnected): its disconnect event is queued and comes next.
            logger.debug("send to a closed socket dropped")

    async def close(self, code=None, reason=None):
        if self.close_code is None:
            self.close_code = code
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
        self.last_frame_at = asyncio.get_running_loop().time()
        frame = frames.frame_decode(text_data)
        if isinstance(frame, frames.Refusal):
            await self._refused(frame)
            return
        kind = frame.kind
        metrics.FRAMES_RECEIVED.labels(metrics.frame_type(kind)).inc()
        await self._presence_touch(active=frame.active)
        try:
            await self.frame_handlers[kind](self, frame)
        except Exception as error:
            await self._failed(error, kind, frame.ref)

    async def _refused(self, refusal):
        """Reply to a refused frame; presence hears of it as of any frame."""
        if refusal.counted:
            metrics.FRAMES_RECEIVED.labels(metrics.frame_type(refusal.request)).inc()
        if refusal.heard:
            await self._presence_touch(active=refusal.active)
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
            await self._presence_frame_hit(unchecked_ok=True)
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
        await self.send_frame(
            {
                "type": "joined",
                "room": slug,
                "last_seq": join.last_seq,
                "members": await self._presence_room_enter(slug),
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
            await self.socket_typing.stop(slug)
            await self._unsubscribe(slug)
            await presence_services.presence_room_exit(
                sid=self.connection_id,
                user_id=self.user.id,
                username=self.user.username,
                slug=slug,
            )
        await self.send_frame({"type": "left", "room": slug})

    async def frame_message(self, frame: frames.Message):
        room = await self._joined_room(frame.room)
        result = await services.message_send(
            user=self.user,
            room=room,
            body=frame.body,
            client_id=frame.client_id,
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
            await self.socket_typing.start(room.slug)
        else:
            await self.socket_typing.stop(room.slug)

    async def frame_delete(self, frame: frames.Delete):
        room = await self._joined_room(frame.room)
        result = await _message_delete(user=self.user, room=room, message_id=frame.id)
        # The room hears of it after the commit (this socket too, being in the room);
        # a tombstone deleted again is confirmed to the sender alone.
        if not result.deleted:
            await self.send_frame({"type": "message_deleted", **result.event})

    async def frame_edit(self, frame: frames.Edit):
        room = await self._joined_room(frame.room)
        result = await services.message_edit(
            user=self.user, room=room, message_id=frame.id, body=frame.body
        )
        # No ack: the room hears `message_edited` after the commit, this socket
        # too; an edit that changes nothing is confirmed to the sender alone.
        if not result.edited:
            await self.send_frame({"type": "message_edited", **result.event})

    async def frame_read(self, frame: frames.Read):
        slug = frame.room
        if not selectors.is_room_slug(slug):
            raise NotFound(f"No room {slug!r}.", field="room")
        state, moved = await _membership_read(self.user, slug, frame.seq)
        # Moved: every socket of the user hears it (this one too, as its reply) from
        # the broadcast; not moved: this socket alone gets the state as it is.
        if not moved:
            await self.send_frame({"type": "read", **state})

    async def frame_ping(self, frame: frames.Ping):
        seqs = await last_seqs.last_seqs_get(slugs=self.rooms) if self.rooms else None
        await self.send_frame(
            {"type": "pong", "ts": frame.ts, "server_ts": int(time.time() * 1000)}
            | ({"last_seq": seqs} if seqs is not None else {})
        )

    async def frame_status(self, frame: frames.Status):
        await self._presence_frame_hit()
        self.away = frame.status == "away"
        await presence_services.presence_set_away(
            sid=self.connection_id, away=self.away
        )

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

    # Events from the hub

    def deliver(self, text, frame, ephemeral=None):
        """Write a broadcast (its text, and its prebuilt WebSocket frame) now, or after
        the frame in hand / a full buffer.

        Past the soft cap of unread output, `ephemeral` events (their type: typing,
        presence) are dropped; past the hard cap the socket closes with 1013 and its
        client recovers by seq. O(1): the server's count plus `pending_bytes`.
        """
        if self.close_code is not None:
            return  # closed by us: uvicorn raises on a send after close
        queued = self.queued_bytes()
        if queued > self.soft_bytes:
            if ephemeral is not None:
                metrics.SOCKET_SHED.labels(ephemeral).inc()
                return
            if queued + len(frame) > self.hard_bytes:
                self._overflow_close(queued)
                return
        if self.holds:
            if self.pending is None:
                self.pending = deque()
            self.pending.append((text, frame))
            self.pending_bytes += len(frame)
            return
        self._write(text, frame)

    def queued_bytes(self):
        """This socket's output its client has not read yet (for /health)."""
        queued = self.pending_bytes
        if self.output_bytes is not None:
            queued += self.output_bytes()
        return queued

    def _overflow_close(self, queued):
        self.close_code = CLOSE_SERVICE_DOWN  # from here on, nothing more is queued
        self.pending = None
        self.pending_bytes = 0
        metrics.SOCKET_OVERFLOW_CLOSED.inc()
        logger.info(
            "socket overflow",
            extra={
                "event": "socket_overflow",
                "user_id": self.user_id,
                "connection_id": self.connection_id,
                "bytes": queued,
            },
        )
        asyncio.ensure_future(self._close_overflowing())

    async def _close_overflowing(self):
        # Not between frames (as a kick): the frame in hand may itself be waiting
        # for room in the buffer, which the close releases.
        try:
            await self.close(code=CLOSE_SERVICE_DOWN)
        except OSError:
            pass  # the client left meanwhile: its disconnect event comes next

    def _write(self, text, frame):
        # The server's batched writes when it offers them, else an ASGI send.
        if self.frame_queue is not None and self.frame_queue(frame):
            return
        try:
            writing = _start_eagerly(
                self.base_send({"type": "websocket.send", "text": text})
            )
        except Exception:
            # The client left (uvicorn raises ClientDisconnected): its disconnect
            # event is queued and comes next.
            return
        if writing is not None:  # the socket's write buffer is full: keep order
            self.holds += 1
            writing.add_done_callback(self._written)

    def _written(self, writing):
        self.holds -= 1
        if not writing.cancelled() and writing.exception() is not None:
            logger.debug("broadcast to a closed socket dropped")
        self._pending_send()

    def _pending_send(self):
        while not self.holds and self.pending:
            if self.close_code is not None:
                self.pending = None
                self.pending_bytes = 0
                return
            text, frame = self.pending.popleft()
            self.pending_bytes -= len(frame)
            self._write(text, frame)
        if not self.pending:
            self.pending = None

    def user_event(self, event):
        if event["type"] == "user.muted":
            until = event["until"]
            self.muted_until = until and datetime.fromtimestamp(until, UTC)
        elif event["type"] == "user.kicked":
            asyncio.ensure_future(self._kicked())
        elif event["type"] == "user.frame":
            text = event["text"]
            self.deliver(text, text_frame(text.encode()))
        elif event["type"] == "user.room_removed":
            asyncio.ensure_future(self._room_removed(event["room"]))

    async def _room_removed(self, slug):
        """The user may no longer be in the room: this socket leaves it at once, so no
        more of its messages, typing or presence reach it, and the client is told."""
        async with self.dispatching:  # between frames, like a kick
            if self.close_code is not None or self.released:
                return
            if slug in self.rooms:
                await self.socket_typing.stop(slug)
                await self._unsubscribe(slug)
                try:
                    await presence_services.presence_room_exit(
                        sid=self.connection_id,
                        user_id=self.user.id,
                        username=self.user.username,
                        slug=slug,
                    )
                except Exception:
                    logger.warning("presence exit of %s failed", slug, exc_info=True)
            await self.send_frame({"type": "room_removed", "room": slug})

    async def _kicked(self):
        logger.info(
            "socket kicked",
            extra={
                "event": "socket_kicked",
                "user_id": self.user and self.user.pk,
                "connection_id": self.connection_id,
            },
        )
        async with self.dispatching:  # between frames, like a drain
            await self.close(code=CLOSE_KICKED)

    def silence_check(self, now):
        """Close with 4408 once no frame came for the dead timeout (the hub's timer)."""
        if self.silenced or not self.presence_registered:
            return
        if now - self.last_frame_at >= settings.VOICEFLOW["DEAD_AFTER"]:
            self.silenced = True
            asyncio.ensure_future(self._close_silent())

    async def _close_silent(self):
        # A dead client may never answer the close: leave presence first.
        await self._presence_end()
        await self.close(code=CLOSE_SILENT)

    # Presence of this socket

    def _presence_start(self):
        self.presence_registered = True
        self.socket_typing = presence_services.SocketTyping(
            self.user.id, self.user.username
        )
        self.last_frame_at = self.touched_at = self.active_at = (
            asyncio.get_running_loop().time()
        )
        presence_services.embedded_sweeper_start()
        presence_services.presence_watch_start(sockets.sockets_presence_restore)

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
        if not known:  # Redis lost it (restarted empty), or swept while alive
            await self.presence_restore()

    async def presence_restore(self):
        """Be in presence again, with this socket's rooms, without a reconnect."""
        if not self.presence_registered:
            return
        try:
            restored = await presence_services.presence_restore(
                sid=self.connection_id,
                user_id=self.user.id,
                username=self.user.username,
                rooms=list(self.rooms),
                away=self.away,
            )
        except Exception:
            logger.warning("presence restore failed", exc_info=True)
            return
        if not restored:  # the user's other sockets took every slot meanwhile
            await self._presence_end()
            await self.close(code=CLOSE_TOO_MANY)

    async def _presence_room_enter(self, slug):
        """Be present in the room; its members. Best effort: messages matter more."""
        try:
            await presence_services.presence_room_enter(
                sid=self.connection_id,
                user_id=self.user.id,
                username=self.user.username,
                slug=slug,
            )
            return await presence_selectors.room_members(slug)
        except Exception:
            logger.warning("presence of a join into %s failed", slug, exc_info=True)
            return []

    async def _presence_end(self):
        if not self.presence_registered:
            return
        self.presence_registered = False
        try:
            await self.socket_typing.stop_all()
            await presence_services.presence_disconnect(sid=self.connection_id)
        except Exception:
            logger.warning(
                "presence cleanup of %s failed", self.connection_id, exc_info=True
            )

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
        """The join's counted hit; None for a member's join refused or left unchecked.

        A member's join is served without counting, even over the limit or with Redis
        down, so recovery after a reconnect always works; others get the refusal.
        """
        try:
            decision = await ratelimit.rate_hit("join", self.user.pk)
        except Unavailable as unchecked:
            refusal = unchecked
        else:
            if decision.allowed:
                return decision
            refusal = decision.refusal("joins")
        if await socket_database_sync_to_async(selectors.is_member)(self.user, slug):
            return None
        raise refusal

    async def _presence_frame_hit(self, unchecked_ok=False):
        """Count a `status`, a `leave` or a re-join; raise RateLimited over the limit.

        With Redis down, a re-join is served (recovery), the others are `unavailable`.
        """
        try:
            await ratelimit.rate_enforce("presence", self.user.pk, "presence changes")
        except Unavailable:
            if not unchecked_ok:
                raise

    async def _typing_allowed(self):
        try:
            return (await ratelimit.rate_hit("typing", self.user.pk)).allowed
        except Unavailable:
            return False  # typing is best effort: dropped like one over the limit

    async def _unsubscribe(self, slug):
        if self.rooms.pop(slug, None) is not None:
            sockets.room_left(slug)
        try:
            await self.hub.room_remove(slug, self)
        except Exception:
            logger.warning("unsubscribe from %s failed", slug, exc_info=True)

    async def send_frame(self, frame):
        metrics.FRAMES_SENT.labels(metrics.frame_type(frame["type"])).inc()
        data = orjson.dumps(frame)
        # Prebuilt, through the server's batched writes where it offers them: no
        # framing by websockets, and the frame leaves with the socket's others of
        # this loop turn (an ack with its own message's broadcast). Else, or when the
        # socket cannot take it now (closing, buffer full), an ASGI send as before.
        if (
            self.frame_queue is not None
            and self.close_code is None
            and self.frame_queue(text_frame(data))
        ):
            return
        await self.send(text_data=data.decode())

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
        await self.send_frame(frame)

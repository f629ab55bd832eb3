"""Writes: rooms, memberships and messages. Every event push of a write starts here."""

from __future__ import annotations

import logging
import re
import secrets
import time
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import TYPE_CHECKING, Any

from asgiref.sync import async_to_sync
from channels.db import database_sync_to_async
from django.conf import settings
from django.contrib.auth import get_user_model
from django.core.exceptions import ValidationError
from django.db import IntegrityError, transaction
from django.db.models.functions import Lower
from django.utils import timezone
from django.utils.text import slugify
from rest_framework.authtoken.models import Token

from voiceflow import metrics
from voiceflow.runtime.db import room_database_sync_to_async

from . import access, broadcast, ratelimit, selectors
from .errors import Forbidden, Invalid, NotFound, Unavailable
from .models import (
    Membership,
    Message,
    MessageEdit,
    MessageMention,
    ModerationAction,
    Mute,
    OfflineMark,
    Room,
)
from .payloads import message_data, message_data_posted
from .store import Counter, Post, message_store
from .validators import CONTROL_CHARS, text_clean, validate_name_text

if TYPE_CHECKING:
    from collections.abc import Iterable

    from django.contrib.auth.models import User

logger = logging.getLogger(__name__)


@dataclass(frozen=True)
class DeleteResult:
    """The `message_deleted` data; `deleted` is False if it was a tombstone already."""

    event: dict
    deleted: bool


@dataclass(frozen=True)
class EditResult:
    """The `message_edited` data; `edited` is False if the body was that already."""

    event: dict
    edited: bool


@dataclass(frozen=True)
class PostResult:
    """A stored message in wire form; `created` is False for an idempotent replay."""

    message: dict
    created: bool


def clean_body(body: object) -> str:
    """The body stripped of surrounding whitespace, or Invalid."""
    return text_clean(body, field="body", limit=settings.VOICEFLOW["MAX_BODY_CHARS"])


def clean_client_id(client_id: object) -> str | None:
    """The client_id (a string of 1–64 characters) or None, else Invalid."""
    if client_id is None:
        return None
    if not isinstance(client_id, str) or not 1 <= len(client_id) <= 64:
        raise Invalid(
            "client_id must be a string of 1–64 characters.", field="client_id"
        )
    if CONTROL_CHARS.search(client_id):
        raise Invalid("client_id contains control characters.", field="client_id")
    return client_id


def clean_message_id(message_id: object) -> int:
    """A message id from a frame or request (an integer, not a bool), else Invalid."""
    if isinstance(message_id, bool) or not isinstance(message_id, int):
        raise Invalid("id must be an integer.", field="id")
    return message_id


# `@name` where name follows the username rule (letters, digits and @.+-_), not
# preceded by one of those characters (so an e-mail address is not a mention).
MENTION = re.compile(r"(?<![\w.@+-])@([\w.@+-]{1,150})")


def mention_names(body: str) -> set[str]:
    """The lowercased names a body may mention (also without trailing punctuation)."""
    if "@" not in body:
        return set()
    names: set[str] = set()
    for match in MENTION.finditer(body):
        name = match.group(1).lower()
        names.update((name, name.rstrip(".-+@")))
    names.discard("")
    return names


def _mentions_resolve(room, body):
    """[(user id, username)] of the users `body` mentions who may see `room`."""
    names = mention_names(body)
    if not names:
        return []
    return list(
        access.room_audience(room=room)
        .annotate(lowered=Lower("username"))
        .filter(lowered__in=names)
        .order_by("username")
        .values_list("pk", "username")
    )


def _mentions_store(message, mentioned):
    """Make `mentioned` the mentions of a message just inserted or edited (in the
    transaction of its insert or edit); nothing to do if they are those it has."""
    names = [username for _, username in mentioned] or None
    if names == message.mentions:
        return
    if message.mentions:
        # An edit's: its rows are replaced, so a user no longer mentioned no longer
        # counts it.
        MessageMention.objects.filter(message_id=message.pk).delete()
    message.mentions = names
    Message.objects.filter(pk=message.pk).update(mentions=names)
    MessageMention.objects.bulk_create(
        MessageMention(
            message_id=message.pk,
            user_id=user_id,
            room_id=message.room_id,
            seq=message.seq,
        )
        for user_id, _ in mentioned
    )


def user_register(*, username: str, password: str) -> Token:
    """Create a user and their API token."""
    try:
        with transaction.atomic():
            user = get_user_model().objects.create_user(
                username=username, password=password
            )
            return Token.objects.create(user=user)
    except IntegrityError:
        raise ValidationError({"username": ["This username is taken."]}) from None


def room_create(
    *,
    user: User,
    name: str,
    slug: str | None = None,
    # mypy, without Django's stubs, takes a choice for its (value, label) tuple.
    visibility: str = Room.Visibility.PUBLIC,  # type: ignore[assignment]
) -> Room:
    """Create a room; the slug defaults to one made from the name.

    A private room's creator becomes its first member (who may see it, add others).
    """
    try:
        validate_name_text(name)
    except ValidationError as error:
        raise ValidationError({"name": error.messages}) from None
    slug = slug or slugify(name)[:50].strip("-")
    room = Room(name=name, slug=slug, created_by=user, visibility=visibility)
    room.full_clean()
    try:
        with transaction.atomic():
            room.save()
            if not room.is_public:
                Membership.objects.create(user=user, room=room)
    except IntegrityError:
        raise ValidationError(
            {"slug": ["A room with this slug already exists."]}
        ) from None
    return room


DM_MAX_OTHERS = 7


def dm_open(*, user: User, usernames: object) -> tuple[Room, bool]:
    """The DM of `user` and the users named (1–7 others): (room, whether it is new).

    One set of people has one DM: its key (the sorted member ids) is unique, so of
    two concurrent opens one creates it and the other gets it.
    """
    if not isinstance(usernames, list) or not all(
        isinstance(name, str) for name in usernames
    ):
        raise Invalid("users must be a list of usernames.", field="users")
    names = {name for name in usernames if name != user.username}
    if not 1 <= len(names) <= DM_MAX_OTHERS:
        raise Invalid(f"users must name 1–{DM_MAX_OTHERS} other users.", field="users")
    others = list(get_user_model().objects.filter(username__in=names, is_active=True))
    unknown = names - {other.username for other in others}
    if unknown:
        raise Invalid(f"No user {sorted(unknown)[0]!r}.", field="users")
    people = sorted([user, *others], key=lambda person: person.pk)
    key = ",".join(str(person.pk) for person in people)
    for _ in range(3):  # a random slug taken already: try another
        existing = Room.objects.filter(dm_key=key).first()
        if existing is not None:
            return existing, False
        room = Room(
            slug=f"dm-{secrets.token_hex(8)}",
            name=", ".join(sorted(p.username for p in people))[:100],
            created_by=user,
            visibility=Room.Visibility.PRIVATE,
            kind=Room.Kind.DIRECT,
            dm_key=key,
        )
        try:
            with transaction.atomic():
                room.save()
                Membership.objects.bulk_create(
                    [Membership(user=person, room=room) for person in people]
                )
        except IntegrityError:
            continue
        for other in others:
            _publish_on_commit(broadcast.user_room_added, other.pk, room.slug)
        return room, True
    raise Unavailable("Could not open the conversation; retry.")


def _member_target(room, username):
    if not isinstance(username, str) or not username:
        raise Invalid("username is required.", field="username")
    target = get_user_model().objects.filter(username=username, is_active=True).first()
    if target is None:
        raise Invalid(f"No user {username!r}.", field="username")
    return target


def room_member_add(*, actor: User, room: Room, username: object) -> bool:
    """A member (or staff) adds a user to `room`; True if they were not a member.

    A DM never gains members (a new set of people is a new DM).
    """
    if room.kind == Room.Kind.DIRECT:
        raise Forbidden("No one can be added to a direct conversation.")
    if not actor.is_staff and not selectors.is_member(actor, room.slug):
        raise Forbidden("Only members can add people to this room.")
    target = _member_target(room, username)
    with transaction.atomic():
        added = room_join(user=target, room=room)
        if added:
            _publish_on_commit(broadcast.user_room_added, target.pk, room.slug)
    return added


def room_member_remove(*, actor: User, room: Room, username: str) -> None:
    """The room's creator or staff ends someone's membership (anyone, their own).

    Their live sockets lose the room at once if they may no longer see it, or if it
    was someone else who removed them. Not a member → NotFound.
    """
    target = get_user_model().objects.filter(username=username).first()
    if target is None or not selectors.is_member(target, room.slug):
        raise NotFound(f"{username!r} is not a member of {room.slug!r}.")
    if target.pk != actor.pk:
        if room.kind == Room.Kind.DIRECT:
            raise Forbidden("No one can be removed from a direct conversation.")
        if not actor.is_staff and room.created_by_id != actor.pk:
            raise Forbidden("Only the room's creator or staff can remove members.")
    membership_end(user=target, room=room, removed=target.pk != actor.pk)


def room_join(*, user: User, room: Room) -> bool:
    """Make `user` a member of `room` (idempotent); True if they were not one yet."""
    return Membership.objects.get_or_create(user=user, room=room)[1]


async def room_join_visible(*, user: User, slug: str) -> tuple[Room, bool]:
    """(room, whether `user` just became a member) for the room with this slug.

    NotFound for an unknown slug or a room `user` may not see (chat.access). A
    member's join writes nothing.
    """
    return await message_store().room_join(user=user, slug=slug)


def membership_end(*, user: User, room: Room, removed: bool = False) -> bool:
    """End `user`'s membership of `room`; True if there was one.

    If they may no longer see the room (private, a DM) or were `removed` by someone
    else, every socket of theirs leaves it, on every process (`room_removed`).
    """
    with transaction.atomic():
        deleted, _ = Membership.objects.filter(user=user, room=room).delete()
        if deleted and (removed or not access.room_can_see(user=user, room=room)):
            _publish_on_commit(broadcast.user_room_removed, user.pk, room.slug)
    return bool(deleted)


def membership_read(*, user: User, room: Room, seq: object) -> tuple[dict, bool]:
    """Move `user`'s last read seq in `room` forward to `seq` (never back, at most the
    room's last seq): (their state {"room", "last_read_seq", "unread", "mentions"},
    whether it moved). Every socket of theirs is told when it moved. Not a member →
    Forbidden."""
    if isinstance(seq, bool) or not isinstance(seq, int) or seq < 0:
        raise Invalid("seq must be a non-negative integer.", field="seq")
    last_seq = Room.objects.filter(pk=room.pk).values_list("last_seq", flat=True)
    target = min(seq, last_seq.first() or 0)
    with transaction.atomic():
        mine = Membership.objects.filter(user_id=user.pk, room_id=room.pk)
        moved = mine.filter(last_read_seq__lt=target).update(last_read_seq=target)
        if not moved and not mine.exists():
            raise Forbidden(f"Join {room.slug!r} before marking it read.", field="room")
        state = selectors.membership_state(user=user, room=room)
        if moved:
            _publish_on_commit(broadcast.user_read, user.pk, state)
    return state, bool(moved)


def _room_counter_take(room_id, counter: Counter, count, user_id, now):
    """Add `count` to the room's `counter` under its row lock (to the commit).

    Returns (its new value, is_locked, id of the user's current mute or None), or
    None if the room is gone: the mute is read with the counter, so checking it is
    free.
    """
    return message_store().room_counter_take(
        room_id=room_id, counter=counter, count=count, user_id=user_id, now=now
    )


def message_stored(user: User, client_id: str | None) -> dict | None:
    """The wire form of `user`'s stored message with this client_id, or None."""
    if not client_id:
        return None
    return _stored_by_client_id(user, client_id)


def _stored_by_client_id(user, client_id):
    message = (
        Message.objects.select_related("room")
        .filter(user=user, client_id=client_id)
        .first()
    )
    return message and message_data(message, username=user.username)


def _message_insert_checked(room, user, body, client_id, now):
    """Check access (NotFound), bump the seq, check lock and mute (Forbidden),
    insert; the new Message. In the caller's transaction."""
    if not room.is_public and not access.room_can_see(user=user, room=room):
        raise NotFound(f"No room {room.slug!r}.", field="room")
    bumped = _room_counter_take(room.id, "last_seq", 1, user.id, now)
    if bumped is None:
        raise Forbidden("This room no longer exists.", field="room")
    seq, room.is_locked, mute_id = bumped
    muted_until = None
    if mute_id is not None:  # rare: only a muted poster pays this query
        muted_until = Mute.objects.get(pk=mute_id).until
    refusal = selectors.post_refusal(user, room, muted_until=muted_until, now=now)
    if refusal:
        raise Forbidden(refusal, field="room")
    return Message.objects.create(
        room_id=room.id, seq=seq, user=user, body=body, client_id=client_id
    )


def message_post(
    *,
    user: User,
    room: Room,
    body: object,
    client_id: object = None,
    ensure_membership: bool = True,
) -> PostResult:
    """Store a message with the room's next seq; a known client_id replays the original.

    Checked in full (access, lock, mute: a refusal says why), with its mentions and,
    if `ensure_membership`, the poster's membership, in one transaction. The seq is
    taken under the room row's lock inside it, so seqs are gap-free and in commit
    order. A duplicate client_id (also a racing one) hits the unique constraint,
    rolls back the bump, and returns the stored message.
    """
    body = clean_body(body)
    client_id = clean_client_id(client_id)
    started = time.perf_counter()
    # Only a body with an "@" pays for looking up whom it mentions.
    mentioned = _mentions_resolve(room, body) if "@" in body else []
    try:
        with transaction.atomic():
            now = timezone.now()
            message = _message_insert_checked(room, user, body, client_id, now)
            if mentioned:
                _mentions_store(message, mentioned)
            if ensure_membership:
                Membership.objects.get_or_create(user=user, room_id=room.id)
    except IntegrityError:
        stored = client_id and _stored_by_client_id(user, client_id)
        if not stored:
            raise
        return PostResult(stored, created=False)
    metrics.MESSAGE_STORE_SECONDS.observe(time.perf_counter() - started)
    metrics.MESSAGES_STORED.inc()
    data = message_data(message, room_slug=room.slug, username=user.username)
    return PostResult(data, created=True)


async def _message_post_quick(user, room, body, client_id):
    """A socket's plain post, stored by the store's one-step insert.

    One commit of its own, with no reason given: None when it stored nothing
    (refused, or a replay of a stored client_id); message_post then says why, or
    returns the stored message.
    """
    started = time.perf_counter()
    now = timezone.now()
    post = Post(room.id, user.id, body, client_id, now, not room.is_public)
    row = await message_store().message_insert(post)
    if row is None:
        return None
    room.is_locked = False  # the insert stores in unlocked rooms only
    metrics.MESSAGE_STORE_SECONDS.observe(time.perf_counter() - started)
    metrics.MESSAGES_STORED.inc()
    data = message_data_posted(
        id=row[0],
        seq=row[1],
        room_slug=room.slug,
        username=user.username,
        body=body,
        client_id=client_id,
        created_at=now,
    )
    return PostResult(data, created=True)


async def message_send(
    *,
    user: User,
    room: Room,
    body: object,
    client_id: object = None,
    ensure_membership: bool = True,
) -> PostResult:
    """Rate-limit, store, then broadcast a message once it is committed.

    Only new messages count against the limit: the hit is taken before the insert
    (one Redis round trip, no extra database query on the hot path) and refunded when
    the insert turns out to be a replay or fails. A replay refused by the limit is
    looked up and acked anyway: resends are never limited.
    """
    body, client_id = clean_body(body), clean_client_id(client_id)
    decision = await ratelimit.rate_hit("message", user.pk)
    if not decision.allowed:
        stored = client_id and await database_sync_to_async(message_stored)(
            user, client_id
        )
        if not stored:
            raise decision.refusal("messages")
        return PostResult(stored, created=False)
    try:
        result = None
        # A body that may mention someone, or a post that makes its poster a member,
        # takes message_post: those rows are stored in the insert's transaction.
        if not ensure_membership and "@" not in body:
            result = await _message_post_quick(user, room, body, client_id)
        if result is None:
            # The room's own writer thread: rooms insert in parallel, one room in order.
            result = await room_database_sync_to_async(room.id)(message_post)(
                user=user,
                room=room,
                body=body,
                client_id=client_id,
                ensure_membership=ensure_membership,
            )
    except BaseException:
        await ratelimit.rate_refund(decision)
        raise
    if not result.created:
        await ratelimit.rate_refund(decision)
    else:
        try:
            await broadcast.message_created(result.message)
        except Exception:
            # Stored is what an ack promises; sockets recover it by seq on rejoin.
            logger.exception("broadcast of message %s failed", result.message["id"])
    return result


# The offline queue (PROTOCOL.md "Delivery guarantees"): a mark per offline user in the
# database, so it survives restarts and a Redis flush; the queue is a query over it.


def offline_mark_set(*, user_id: int, since: datetime) -> None:
    """Note that `user_id` went offline at `since` (a datetime); an earlier stays."""
    try:
        mark, created = OfflineMark.objects.get_or_create(
            user_id=user_id, defaults={"since": since}
        )
    except IntegrityError:
        return  # the user was deleted meanwhile
    if not created and since < mark.since:
        OfflineMark.objects.filter(pk=user_id).update(since=since)


async def on_user_went_offline(
    sender: object, *, user_id: int, since: float, **kwargs: Any
) -> None:
    """presence's `user_went_offline` hook (connected in ChatConfig.ready())."""
    at = datetime.fromtimestamp(since, UTC)
    await database_sync_to_async(offline_mark_set)(user_id=user_id, since=at)


@dataclass(frozen=True)
class OfflineQueue:
    """The `offline_messages` frame's data: messages oldest first, how many fell out."""

    messages: list
    dropped: int


def offline_queue_take(
    *, user: User, now: datetime | None = None
) -> OfflineQueue | None:
    """Take the user's offline queue (once: the mark is consumed); None if no mark."""
    conf = settings.VOICEFLOW
    with transaction.atomic():
        # Row lock: of two sockets connecting at once, one gets the queue.
        mark = OfflineMark.objects.select_for_update().filter(user=user).first()
        if mark is None:
            return None
        mark.delete()
        rows, dropped = selectors.offline_messages(
            user,
            mark.since,
            limit=conf["OFFLINE_QUEUE_LIMIT"],
            max_age=timedelta(seconds=conf["OFFLINE_QUEUE_MAX_AGE"]),
            now=now,
        )
    return OfflineQueue([message_data(m) for m in rows], dropped)


# Deletion and moderation. These are sync (admin, REST, and the socket through
# database_sync_to_async) and publish their events once the transaction commits.


def _publish_on_commit(send, *args):
    """Run the broadcast coroutine `send(*args)` once the transaction commits."""

    def publish():
        try:
            async_to_sync(send)(*args)
        except Exception:
            # The write stands; sockets see it on their next join or history fetch.
            logger.exception("broadcast %s failed", send.__name__)

    transaction.on_commit(publish)


def _record(actor, kind, *, reason="", **targets):
    action = ModerationAction.objects.create(
        actor=actor, kind=kind, reason=reason[:200], **targets
    )
    logger.info(
        "moderation: %s",
        kind,
        extra={
            "event": "moderation",
            "action": kind,
            "actor_id": action.actor_id,
            "target_user_id": action.target_user_id,
            "room_id": action.room_id,
            "message_id": action.message_id,
        },
    )
    return action


def _deleted_event(message, room_slug):
    return {
        "room": room_slug,
        "id": message.id,
        "seq": message.seq,
        "change": message.change_seq,
    }


def _edited_event(message, room_slug, username):
    return {
        "room": room_slug,
        "message": message_data(message, room_slug=room_slug, username=username),
        "change": message.change_seq,
    }


def messages_delete(
    *, actor: User, messages: Iterable[Message], reason: str = ""
) -> int:
    """Soft-delete messages (a moderator's bulk action); returns how many were live.

    Each becomes a tombstone in history, and its room's sockets get `message_deleted`.
    """
    now = timezone.now()
    with transaction.atomic():
        rows = list(
            # Message rows only: their rooms are locked below, in id order.
            Message.objects.select_for_update(of=("self",))
            .filter(pk__in=[m.pk for m in messages], deleted_at__isnull=True)
            .select_related("room")
            .order_by("pk")
        )
        by_room: dict[int, list[Message]] = {}
        for message in rows:
            by_room.setdefault(message.room_id, []).append(message)
        # Rooms in id order, so that two bulk deletions cannot deadlock.
        for room_id in sorted(by_room):
            in_room = by_room[room_id]
            last = _room_counter_take(
                room_id, "last_change", len(in_room), actor.pk, now
            )[0]
            for change, message in enumerate(in_room, start=last - len(in_room) + 1):
                _soft_delete(actor, message, message.room.slug, reason, change, now)
    return len(rows)


def message_delete(*, user: User, room: Room, message_id: object) -> DeleteResult:
    """The author, or a moderator (chat.access), deletes a message in `room`.

    Unknown (or in another room) → NotFound; someone else's, for a user who may not
    moderate `room` → Forbidden. A moderator's deletion is recorded with them as its
    actor and the author as its target. Deleting a tombstone again changes nothing
    and broadcasts nothing.
    """
    message_id = clean_message_id(message_id)
    with transaction.atomic():
        message = _message_locked(room, message_id)
        own = message.user_id == user.id
        if not own and not access.user_can_moderate(user=user, room=room):
            raise Forbidden("Only its author or a moderator can delete a message.")
        deleted = message.deleted_at is None
        if deleted:
            now = timezone.now()
            change = _room_counter_take(room.id, "last_change", 1, user.id, now)[0]
            reason = "by its author" if own else "by a moderator"
            _soft_delete(user, message, room.slug, reason, change, now)
    return DeleteResult(_deleted_event(message, room.slug), deleted)


def _message_locked(room, message_id):
    """Message `message_id` of `room`, row-locked; NotFound."""
    message = (
        Message.objects.select_for_update()
        .filter(pk=message_id, room_id=room.id)
        .first()
    )
    if message is None:
        raise NotFound(f"No message {message_id} in {room.slug!r}.", field="id")
    return message


def _soft_delete(actor, message, room_slug, reason, change, now):
    message.deleted_at = now
    message.change_seq = change
    message.save(update_fields=["deleted_at", "change_seq"])
    _record(
        actor,
        ModerationAction.Kind.MESSAGE_DELETE,
        reason=reason,
        message=message,
        room_id=message.room_id,
        target_user_id=message.user_id,
    )
    _publish_on_commit(broadcast.message_deleted, _deleted_event(message, room_slug))


def message_edit_store(
    *,
    user: User,
    room: Room,
    message_id: int,
    body: str,
    now: datetime | None = None,
) -> EditResult:
    """The author replaces their message's body (an EditResult); `body` is clean.

    Refused like a post (Forbidden: the room locked, the user muted) and also for
    someone else's message, a tombstone, or one older than the edit window; NotFound
    for an unknown id or one of another room. The previous body is kept as a
    MessageEdit; the room hears `message_edited` once the transaction commits. The
    same body again changes nothing and broadcasts nothing. The mentions are read
    again from the new body (MessageMention rows too, so the unread counts follow).
    """
    now = now or timezone.now()
    # Looked up before the room's row is locked, as a post does.
    mentioned = _mentions_resolve(room, body) if "@" in body else []
    with transaction.atomic():
        message = _message_locked(room, message_id)
        if message.user_id != user.id:
            raise Forbidden("Only its author can edit a message.")
        if message.deleted_at is not None:
            raise Forbidden("A deleted message cannot be edited.", field="id")
        window = settings.VOICEFLOW["EDIT_WINDOW"]
        if now - message.created_at > timedelta(seconds=window):
            raise Forbidden(
                f"Messages can be edited for {window:g} s after they are posted; "
                "this one no longer can be.",
                field="id",
            )
        if message.body == body:
            return EditResult(_edited_event(message, room.slug, user.username), False)
        taken = _room_counter_take(room.id, "last_change", 1, user.id, now)
        if taken is None:
            raise Forbidden("This room no longer exists.", field="room")
        change, room.is_locked, mute_id = taken
        muted_until = None
        if mute_id is not None:
            muted_until = Mute.objects.get(pk=mute_id).until
        refusal = selectors.post_refusal(user, room, muted_until=muted_until, now=now)
        if refusal:
            raise Forbidden(refusal, field="room")
        MessageEdit.objects.create(
            message=message, previous_body=message.body, edited_at=now, editor=user
        )
        message.body, message.edited_at, message.change_seq = body, now, change
        message.save(update_fields=["body", "edited_at", "change_seq"])
        _mentions_store(message, mentioned)
        event = _edited_event(message, room.slug, user.username)
        _publish_on_commit(broadcast.message_edited, event)
    return EditResult(event, True)


async def message_edit(
    *, user: User, room: Room, message_id: object, body: object
) -> EditResult:
    """Rate-limit, then edit (message_edit_store) on the room's writer thread.

    An edit counts against the user's message limit; one refused (or one changing
    nothing) is refunded, as a failed post is.
    """
    message_id, body = clean_message_id(message_id), clean_body(body)
    decision = await ratelimit.rate_hit("message", user.pk)
    if not decision.allowed:
        raise decision.refusal("messages")
    try:
        result = await room_database_sync_to_async(room.id)(message_edit_store)(
            user=user, room=room, message_id=message_id, body=body
        )
    except BaseException:
        await ratelimit.rate_refund(decision)
        raise
    if not result.edited:
        await ratelimit.rate_refund(decision)
    return result


def room_lock_set(*, actor: User, room: Room, locked: bool, reason: str = "") -> bool:
    """Lock (posting refused, reading works) or unlock a room; False if unchanged."""
    with transaction.atomic():
        changed = Room.objects.filter(pk=room.pk, is_locked=not locked).update(
            is_locked=locked
        )
        room.is_locked = locked
        if not changed:
            return False
        kinds = ModerationAction.Kind
        kind = kinds.ROOM_LOCK if locked else kinds.ROOM_UNLOCK
        _record(actor, kind, reason=reason, room=room)
        _publish_on_commit(broadcast.room_lock_changed, room.slug, locked)
    return True


def user_mute(
    *, actor: User, user: User, duration: timedelta, reason: str = ""
) -> Mute:
    """Mute `user` everywhere for `duration` (a timedelta): no posting, no typing."""
    with transaction.atomic():
        mute = Mute.objects.create(
            user=user, until=timezone.now() + duration, reason=reason[:200], by=actor
        )
        _record(actor, ModerationAction.Kind.USER_MUTE, reason=reason, target_user=user)
        until = selectors.mute_until(user.id)  # the longest, if mutes overlap
        _publish_on_commit(broadcast.user_muted, user.id, until and until.timestamp())
    return mute


def user_unmute(*, actor: User, user: User, reason: str = "") -> bool:
    """End every current mute of `user`; False if they were not muted."""
    with transaction.atomic():
        now = timezone.now()
        ended = Mute.objects.filter(user=user, until__gt=now).update(until=now)
        if not ended:
            return False
        kind = ModerationAction.Kind.USER_UNMUTE
        _record(actor, kind, reason=reason, target_user=user)
        _publish_on_commit(broadcast.user_muted, user.id, None)
    return True


def user_kick(*, actor: User, user: User, reason: str = "") -> None:
    """Close every socket of `user`, in every server process, with code 4403."""
    with transaction.atomic():
        _record(actor, ModerationAction.Kind.USER_KICK, reason=reason, target_user=user)
        _publish_on_commit(broadcast.user_kicked, user.id)

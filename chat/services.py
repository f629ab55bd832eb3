"""Writes: rooms, memberships and messages. Every event push of a write starts here."""

import logging
from dataclasses import dataclass

from channels.db import database_sync_to_async
from django.conf import settings
from django.contrib.auth import get_user_model
from django.core.exceptions import ValidationError
from django.db import IntegrityError, connection, transaction
from django.utils.text import slugify
from rest_framework.authtoken.models import Token

from . import broadcast, ratelimit, selectors
from .errors import Forbidden, Invalid, Unavailable
from .models import Membership, Message, Room
from .payloads import message_data
from .validators import CONTROL_CHARS, validate_name_text

logger = logging.getLogger(__name__)

@dataclass(frozen=True)
class PostResult:
    """A stored message in wire form; `created` is False for an idempotent replay."""

    message: dict
    created: bool


def clean_body(body):
    """The body stripped of surrounding whitespace, or Invalid."""
    if not isinstance(body, str):
        raise Invalid("body must be a string.", field="body")
    body = body.strip()
    limit = settings.VOICEFLOW["MAX_BODY_CHARS"]
    if not body:
        raise Invalid("body is empty.", field="body")
    if len(body) > limit:
        raise Invalid(f"body is longer than {limit} characters.", field="body")
    if CONTROL_CHARS.search(body):
        raise Invalid("body contains control characters.", field="body")
    return body


def clean_client_id(client_id):
    """The client_id (a string of 1–64 characters) or None, else Invalid."""
    if client_id is None:
        return None
    if not isinstance(client_id, str) or not 1 <= len(client_id) <= 64:
        raise Invalid("client_id must be a string of 1–64 characters.", field="client_id")
    if CONTROL_CHARS.search(client_id):
        raise Invalid("client_id contains control characters.", field="client_id")
    return client_id


def user_register(*, username, password):
    """Create a user and their API token."""
    try:
        with transaction.atomic():
            user = get_user_model().objects.create_user(
                username=username, password=password
            )
            return Token.objects.create(user=user)
    except IntegrityError:
        raise ValidationError({"username": ["This username is taken."]}) from None


def room_create(*, user, name, slug=None):
    """Create a room; the slug defaults to one made from the name."""
    try:
        validate_name_text(name)
    except ValidationError as error:
        raise ValidationError({"name": error.messages}) from None
    slug = slug or slugify(name)[:50].strip("-")
    room = Room(name=name, slug=slug, created_by=user)
    room.full_clean()
    try:
        with transaction.atomic():
            room.save()
    except IntegrityError:
        raise ValidationError(
            {"slug": ["A room with this slug already exists."]}
        ) from None
    return room


def room_join(*, user, room):
    """Make `user` a member of `room` (idempotent); True if they were not one yet."""
    return Membership.objects.get_or_create(user=user, room=room)[1]


def membership_end(*, user, room):
    """End `user`'s membership of `room`; True if there was one."""
    deleted, _ = Membership.objects.filter(user=user, room=room).delete()
    return bool(deleted)


def _room_next_seq(room_id):
    """Bump the room's seq under its row lock; (seq, is_locked), or None if gone."""
    table = Room._meta.db_table
    with connection.cursor() as cursor:
        cursor.execute(
            f"UPDATE {table} SET last_seq = last_seq + 1 WHERE id = %s "
            "RETURNING last_seq, is_locked",
            [room_id],
        )
        return cursor.fetchone()


def message_stored(user, client_id):
    """The wire form of `user`'s stored message with this client_id, or None."""
    return client_id and _stored_by_client_id(user, client_id)


def _stored_by_client_id(user, client_id):
    message = (
        Message.objects.select_related("room")
        .filter(user=user, client_id=client_id)
        .first()
    )
    return message and message_data(message, username=user.username)


def message_post(*, user, room, body, client_id=None, ensure_membership=True):
    """Store a message with the room's next seq; a known client_id replays the original.

    The seq is taken under the room row's lock inside the insert's transaction, so seqs
    are gap-free and in commit order. A duplicate client_id (also a racing one) hits
    the unique constraint, rolls back the bump, and returns the stored message.
    """
    body = clean_body(body)
    client_id = clean_client_id(client_id)
    try:
        with transaction.atomic():
            bumped = _room_next_seq(room.id)
            if bumped is None:
                raise Forbidden("This room no longer exists.", field="room")
            seq, room.is_locked = bumped
            refusal = selectors.post_refusal(user, room)
            if refusal:
                raise Forbidden(refusal, field="room")
            message = Message.objects.create(
                room_id=room.id, seq=seq, user=user, body=body, client_id=client_id
            )
            if ensure_membership:
                Membership.objects.get_or_create(user=user, room_id=room.id)
    except IntegrityError:
        stored = client_id and _stored_by_client_id(user, client_id)
        if not stored:
            raise
        return PostResult(stored, created=False)
    data = message_data(message, room_slug=room.slug, username=user.username)
    return PostResult(data, created=True)


async def message_send(*, user, room, body, client_id=None, ensure_membership=True):
    """Rate-limit, store, then broadcast a message once it is committed.

    Only new messages count against the limit: the hit is taken before the insert
    (one Redis round trip, no extra database query on the hot path) and refunded when
    the insert turns out to be a replay or fails. A replay refused by the limit (or
    unchecked, Redis down) is looked up and acked anyway: resends are never limited.
    """
    body, client_id = clean_body(body), clean_client_id(client_id)
    try:
        decision = await ratelimit.rate_hit("message", user.pk)
    except Unavailable as unchecked:
        refusal = unchecked
    else:
        refusal = None if decision.allowed else decision.refusal("messages")
    if refusal:
        stored = client_id and await database_sync_to_async(message_stored)(
            user, client_id
        )
        if not stored:
            raise refusal
        return PostResult(stored, created=False)
    try:
        result = await database_sync_to_async(message_post)(
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

"""Reads: rooms, history, and who may post where."""

from __future__ import annotations

import re
from datetime import datetime, timedelta
from typing import TYPE_CHECKING, Any

import orjson
from django.conf import settings
from django.db import connection
from django.db.models import Count, F, IntegerField, Max, OuterRef, QuerySet, Subquery
from django.db.models.functions import Coalesce
from django.utils import timezone

from . import access
from .errors import Invalid, NotFound
from .models import (
    SLUG_PATTERN,
    Membership,
    Message,
    MessageMention,
    Mute,
    Room,
)
from .payloads import timestamp
from .store import message_store, sql
from .validators import text_clean

if TYPE_CHECKING:
    from collections.abc import Iterable

    from django.contrib.auth.models import AnonymousUser, User

_slug_re = re.compile(SLUG_PATTERN)


def is_room_slug(value: object) -> bool:
    """True if `value` has the form of a room slug."""
    return isinstance(value, str) and bool(_slug_re.match(value))


def room_get(slug: object) -> Room:
    """The room with this slug, or NotFound."""
    if not is_room_slug(slug):
        raise NotFound(f"No room {slug!r}.", field="room")
    try:
        return Room.objects.get(slug=slug)
    except Room.DoesNotExist:
        raise NotFound(f"No room {slug!r}.", field="room") from None


async def user_active_aget(user_id: int) -> User | None:
    """The active user with this id, or None (never blocks the loop).

    Annotated like a queryset would: `has_offline_mark`, read in the same statement,
    so a connecting socket learns whether it has an offline queue at no extra cost.
    """
    return await message_store().user_active(user_id)


async def token_user_aget(key: str) -> User | None:
    """The active user of an API token, or None: the same answer as DRF's
    TokenAuthentication (unknown key or inactive user: None)."""
    return await message_store().token_user(key)


async def offline_mark_aexists(user_id: int) -> bool:
    """True if the user has an offline mark (without taking it)."""
    return await message_store().offline_mark_exists(user_id)


async def room_last_seqs_aget(slugs: list[str]) -> dict[str, int]:
    """{slug: last_seq} of the rooms with these slugs, in one statement (never
    blocks the loop)."""
    return await message_store().room_last_seqs(list(slugs))


def is_member(user: User, slug: str) -> bool:
    """True if `user` has a stored membership of the room with this slug."""
    return Membership.objects.filter(user=user, room__slug=slug).exists()


def room_list() -> QuerySet[Room]:
    """All rooms with their member counts, by slug (admin; users see rooms_for)."""
    return Room.objects.annotate(member_count=Count("memberships")).order_by("slug")


def room_queryset_visible(*, user: User | AnonymousUser | None) -> QuerySet[Room]:
    """The rooms `user` may see (chat.access's rule), as a Room queryset."""
    return access.room_queryset_visible(user=user)


def _count(rows):
    """A correlated COUNT(*) of `rows` (one group per outer room), 0 when none."""
    counted = rows.order_by().values("room_id").annotate(n=Count("*")).values("n")
    return Coalesce(Subquery(counted[:1], output_field=IntegerField()), 0)


def rooms_for(*, user: User, member_only: bool = False) -> QuerySet[Room]:
    """The rooms `user` may see (`member_only`: those they are a member of), by slug,
    annotated for their room objects.

    `member_count`, `created_by_name`, and for the user's own rooms `last_read_seq`
    (None elsewhere), `unread` (others' live messages after it) and
    `unread_mentions`, counted up to the room's `last_seq` read alongside. One statement
    whatever the number of rooms: the counts are correlated subqueries that range-
    scan (room, seq) and (user, room, seq) from the last read seq on.
    """
    members = Membership.objects.filter(room_id=OuterRef("pk"))
    mine = members.filter(user_id=user.pk).values("last_read_seq")[:1]
    after = {"room_id": OuterRef("pk"), "seq__gt": OuterRef("last_read_seq")}
    unread = Message.objects.filter(deleted_at__isnull=True, **after).exclude(
        user_id=user.pk
    )
    mentions = MessageMention.objects.filter(
        user_id=user.pk, message__deleted_at__isnull=True, **after
    ).exclude(message__user_id=user.pk)
    rooms = room_queryset_visible(user=user)
    if member_only:
        own = Membership.objects.filter(user_id=user.pk).values("room_id")
        rooms = rooms.filter(pk__in=own)
    return (
        rooms.annotate(
            member_count=_count(members),
            last_read_seq=Subquery(mine),
            created_by_name=F("created_by__username"),
        )
        .annotate(unread=_count(unread), unread_mentions=_count(mentions))
        .order_by("slug")
    )


def room_for(*, user: User, slug: object) -> Room:
    """rooms_for's room with this slug, or NotFound (also one `user` may not see)."""
    room = None
    if is_room_slug(slug):
        room = rooms_for(user=user).filter(slug=slug).first()
    if room is None:
        raise NotFound(f"No room {slug!r}.", field="room")
    return room


def dm_names(*, user: User, rooms: Iterable[Room]) -> dict[int, list[str]]:
    """{room id: the other members' usernames, sorted} for the DMs among `rooms`."""
    ids = [room.pk for room in rooms if room.kind == Room.Kind.DIRECT]
    names: dict[int, list[str]] = {room_id: [] for room_id in ids}
    if ids:
        rows = (
            Membership.objects.filter(room_id__in=ids)
            .exclude(user_id=user.pk)
            .values_list("room_id", "user__username")
            .order_by("user__username")
        )
        for room_id, username in rows:
            names[room_id].append(username)
    return names


def room_name_for(*, user: User, room: Room) -> str:
    """The room's name as `user` sees it (a DM: the other members' usernames)."""
    others = dm_names(user=user, rooms=[room]).get(room.pk)
    return ", ".join(others) if others else room.name


def room_members(*, room: Room) -> list[str]:
    """The room's members' usernames, sorted."""
    return list(
        Membership.objects.filter(room_id=room.pk)
        .order_by("user__username")
        .values_list("user__username", flat=True)
    )


def membership_state(*, user: User, room: Room) -> dict[str, Any]:
    """{"room", "last_read_seq", "unread", "mentions", "last_seq"} of `user` in
    `room` (`last_seq`: the room's, read with the counts, which cover up to it)."""
    state = rooms_for(user=user).filter(pk=room.pk).first()
    return {
        "room": room.slug,
        "last_read_seq": state.last_read_seq,
        "unread": state.unread,
        "mentions": state.unread_mentions,
        "last_seq": state.last_seq,
    }


def post_refusal(
    user: User,
    room: Room,
    *,
    muted_until: datetime | None = None,
    now: datetime | None = None,
) -> str | None:
    """Why `user` may not post in `room` right now, or None if they may.

    `muted_until` is the end of the user's current mute, read by the caller in the
    same query that bumps the seq, so the check costs no extra trip to the database.
    """
    if room.is_locked:
        return "This room is locked: reading still works, posting does not."
    return mute_refusal(muted_until, now=now)


def mute_refusal(
    muted_until: datetime | None, *, now: datetime | None = None
) -> str | None:
    """Why a user muted until `muted_until` may not post or type, with the time left."""
    now = now or timezone.now()
    if muted_until is None or muted_until <= now:
        return None
    left = int((muted_until - now).total_seconds() + 0.999)
    hours, rest = divmod(left, 3600)
    minutes, seconds = divmod(rest, 60)
    parts = [f"{hours} h"] * bool(hours) + [f"{minutes} min"] * bool(minutes)
    parts += [f"{seconds} s"] * bool(seconds or not parts)
    return (
        f"You are muted for another {' '.join(parts)} "
        f"(until {timestamp(muted_until)}): posting and typing are refused."
    )


def mute_until(user_id: int, now: datetime | None = None) -> datetime | None:
    """When the user's longest current mute ends, or None if they are not muted."""
    mute = (
        Mute.objects.filter(user_id=user_id, until__gt=now or timezone.now())
        .order_by("-until")
        .first()
    )
    return mute and mute.until


def deployment_totals() -> dict[str, int]:
    """{"totalUsers", "totalRooms"}: registered users and rooms, in one query."""
    with connection.cursor() as cursor:
        cursor.execute(sql.DEPLOYMENT_TOTALS)
        total_users, total_rooms = cursor.fetchone()
    return {"totalUsers": total_users, "totalRooms": total_rooms}


def history_limit(value: str | None) -> int:
    """A history page size from a query parameter (contract: default 50, max 200)."""
    conf = settings.VOICEFLOW
    if value in (None, ""):
        return conf["HISTORY_LIMIT_DEFAULT"]
    try:
        limit = int(value)
    except (TypeError, ValueError):
        raise Invalid("limit must be an integer.", field="limit") from None
    if limit < 1:
        raise Invalid("limit must be at least 1.", field="limit")
    return min(limit, conf["HISTORY_LIMIT_MAX"])


def _messages(room_id):
    return Message.objects.filter(room_id=room_id).select_related("user", "room")


def messages_after(
    room_id: int, seq: int, limit: int, *, before: int | None = None
) -> tuple[list[Message], bool]:
    """Up to `limit` messages from seq+1 on, oldest first, and whether more follow."""
    rows = _messages(room_id).filter(seq__gt=seq)
    if before is not None:
        rows = rows.filter(seq__lt=before)
    rows = list(rows.order_by("seq")[: limit + 1])
    return rows[:limit], len(rows) > limit


def messages_before(room_id: int, seq: int, limit: int) -> tuple[list[Message], bool]:
    """The `limit` messages just before `seq`, oldest first, and whether older exist."""
    rows = list(_messages(room_id).filter(seq__lt=seq).order_by("-seq")[: limit + 1])
    return rows[:limit][::-1], len(rows) > limit


def messages_latest(room_id: int, limit: int) -> tuple[list[Message], bool]:
    """The newest `limit` messages, oldest first, and whether older exist."""
    rows = list(_messages(room_id).order_by("-seq")[: limit + 1])
    return rows[:limit][::-1], len(rows) > limit


def offline_messages(
    user: User,
    since: datetime,
    *,
    limit: int,
    max_age: timedelta,
    now: datetime | None = None,
) -> tuple[list[Message], int]:
    """The user's offline queue: what others posted in the user's rooms after `since`.

    Returns (the newest `limit` of those younger than `max_age`, oldest first; how many
    more there were, older or beyond the cap). Tombstones are skipped.
    """
    now = now or timezone.now()
    rows = (
        Message.objects.filter(
            access.room_visible_q(user=user, prefix="room__"),
            room__memberships__user=user,
            created_at__gt=since,
            deleted_at__isnull=True,
        )
        .exclude(user=user)
        .select_related("user", "room")
    )
    newest = list(
        rows.filter(created_at__gt=now - max_age).order_by("-created_at", "-id")[:limit]
    )
    return newest[::-1], rows.count() - len(newest)


def messages_changed(
    room_id: int, *, since: int, changes_since: int, through: int, limit: int
) -> tuple[list[Message], bool]:
    """Messages up to seq `since` changed after `changes_since` (up to `through`).

    Oldest change first; returns (up to `limit` of them, whether more exist). What a
    rejoining client, holding seqs 1…`since` as of change `changes_since`, must
    replace; `through` is the room's change counter read before, so that the
    client's next `changes_since` covers exactly what it was sent.
    """
    rows = list(
        _messages(room_id)
        .filter(change_seq__gt=changes_since, change_seq__lte=through, seq__lte=since)
        .filter(change_seq__gt=0)  # lets PostgreSQL use the partial index
        .order_by("change_seq")[: limit + 1]
    )
    return rows[:limit], len(rows) > limit


def messages_changed_after(
    room_id: int, change: int, limit: int
) -> tuple[list[Message], bool]:
    """Messages whose latest edit or deletion came after change `change`.

    Oldest change first; returns (up to `limit` of them, whether more exist).
    """
    rows = list(
        _messages(room_id)
        .filter(change_seq__gt=max(change, 0))
        .order_by("change_seq")[: limit + 1]
    )
    return rows[:limit], len(rows) > limit


def search_query_clean(value: object) -> str:
    """A search query from a query parameter: stripped, 1–max characters, or Invalid."""
    limit = settings.VOICEFLOW["SEARCH_QUERY_MAX_CHARS"]
    return text_clean(value, field="q", limit=limit)


def _search_terms(query):
    """SQLite's fallback: the query's words (quotes dropped), each matched as is."""
    return [term for term in query.replace('"', " ").split() if term]


def messages_search(
    *,
    user: User,
    query: str,
    room: str | None = None,
    author: str | None = None,
    before: int | None = None,
    limit: int,
) -> tuple[list[Message], bool]:
    """Live messages matching `query` in rooms `user` may see, newest first.

    `room` (a slug) and `author` (a username) narrow it; `before` is a message id
    cursor. Returns (up to `limit` messages, whether older matches exist).
    PostgreSQL: full-text search on the 'simple' configuration (no stemming; web
    search syntax: "quoted phrase", or, -word), served by the GIN index on that
    expression. SQLite: every word must appear in the body (case-insensitive).
    """
    rooms = room_queryset_visible(user=user)
    if room is not None:
        rooms = rooms.filter(slug=room)
    rows = Message.objects.filter(room__in=rooms, deleted_at__isnull=True)
    if author is not None:
        rows = rows.filter(user__username=author)
    if before is not None:
        rows = rows.filter(id__lt=before)
    if connection.vendor == "postgresql":
        from django.contrib.postgres.search import SearchQuery, SearchVector

        # The very expression of the index built in migration 0005.
        document = SearchVector("body", config="simple")
        parsed = SearchQuery(query, config="simple", search_type="websearch")
        rows = rows.alias(document=document).filter(document=parsed)
        found = _search_newest(rows, limit + 1, before=before, phrase='"' in query)
    else:
        terms = _search_terms(query)
        if not terms:
            return [], False
        for term in terms:
            rows = rows.filter(body__icontains=term)
        found = list(_with_authors(rows).order_by("-id")[: limit + 1])
    return found[:limit], len(found) > limit


def _with_authors(rows):
    return rows.select_related("user", "room")


def _search_newest(rows, wanted, *, before, phrase):
    """PostgreSQL: the newest `wanted` of `rows` (filtered by a full-text match).

    Two ways: walk ids down from the newest, computing each body's tsvector, until
    `wanted` match (quick when matches are dense), or read every match through the
    GIN index and sort them (quick when they are few). PostgreSQL's planner prices
    the walk's per-row work too low, so the choice is made here, from its estimate N
    of the matches: the walk when N² ≥ 4 · wanted · table rows, and never for a
    phrase (its estimate is a guess). The walk is bounded to 8 times the span of ids
    expected to hold a page; what it does not find is then read the other way.
    """
    plan = orjson.loads(rows.order_by().explain(format="json"))
    matches = max(plan[0]["Plan"]["Plan Rows"], 1)
    table_rows = max(_table_rows_estimate(Message), 1)
    found = []
    if not phrase and matches * matches >= 4 * wanted * table_rows:
        top = before - 1 if before is not None else _message_id_newest()
        floor = top - int(8 * wanted * table_rows / matches)
        found = list(_with_authors(rows.filter(id__gt=floor)).order_by("-id")[:wanted])
        if len(found) == wanted:
            return found
        rows = rows.filter(id__lte=floor)
    # An order the id index cannot give: PostgreSQL reads the matches through the
    # GIN index and sorts them.
    rest = _with_authors(rows.alias(newest=F("id") + 0)).order_by("-newest")
    return found + list(rest[: wanted - len(found)])


def _table_rows_estimate(model):
    """PostgreSQL's estimate of the table's rows (from its last ANALYZE)."""
    with connection.cursor() as cursor:
        cursor.execute(sql.TABLE_ROWS_ESTIMATE, [model._meta.db_table])
        return cursor.fetchone()[0]


def _message_id_newest():
    return Message.objects.aggregate(newest=Max("id"))["newest"] or 0

"""The PostgreSQL store: the statements of `sql`, on the event loop's connections.

A post is one autocommitted statement on its room's writer connection, shared with
the posts queued meanwhile (voiceflow.runtime.db.LoopConnection.batched: group commit);
joins and reads run on the loop's socket connections. No thread, no transaction
around them. The room counters run on the caller's connection, in its transaction.
"""

from datetime import datetime
from typing import Any

import orjson
from django.contrib.auth import get_user_model
from django.db import DEFAULT_DB_ALIAS, IntegrityError, connection
from django.utils import timezone

from chat.errors import NotFound
from chat.models import Room
from voiceflow.runtime import runtime

from . import Counter, Post, Taken, sql


def insert_statement(posts: list[Post]) -> tuple[str, list]:
    """The statement storing `posts` (their rows: index in `posts`, id, seq)."""
    if len(posts) == 1:
        # A third cheaper for PostgreSQL than the general statement with one post.
        room_id, user_id, body, client_id, now, private = posts[0]
        statement, checks = sql.MESSAGE_INSERT_ONE, [room_id, user_id, now]
        if private:  # public rooms' statement goes without the membership check
            statement, checks = (
                sql.MESSAGE_INSERT_ONE_PRIVATE,
                [*checks, room_id, user_id],
            )
        return statement, [*checks, room_id, user_id, body, client_id, now]
    # A batch of public rooms' posts alone runs without the membership check.
    private = any(post.private for post in posts)
    # The posts travel as one JSON array: orjson encodes it in C, where psycopg
    # builds each of six array parameters element by element in Python.
    rows = [
        {
            "ord": index,
            "room_id": post.room_id,
            "user_id": post.user_id,
            "body": post.body,
            "client_id": post.client_id,
            "created_at": post.created_at,
            **({"private": post.private} if private else {}),
        }
        for index, post in enumerate(posts)
    ]
    statement = sql.MESSAGE_INSERT_MANY_PRIVATE if private else sql.MESSAGE_INSERT_MANY
    return statement, [orjson.dumps(rows).decode()]


class PostgresStore:
    async def message_insert(self, post: Post) -> tuple[int, int] | None:
        try:
            # Group commit: posts queued while the room's connection is busy share
            # one statement and one commit; under load, batches grow, not the queue.
            writer = runtime().room_writer(post.room_id)
            return await writer.batched(insert_statement, post)
        except IntegrityError:
            return None  # a replay: the poster's client_id is taken

    async def room_join(self, *, user: Any, slug: str) -> tuple[Room, bool]:
        reader = runtime().socket_connection()
        row = await reader.fetchone(
            sql.ROOM_JOIN,
            [
                *(slug, Room.Visibility.PUBLIC, user.pk),
                *(user.is_staff, Room.Kind.ROOM, user.pk, timezone.now()),
            ],
        )
        if row is None:
            raise NotFound(f"No room {slug!r}.", field="room")
        return Room.from_db(DEFAULT_DB_ALIAS, sql.ROOM_FIELDS, row[:-1]), row[-1]

    async def user_active(self, user_id: int) -> Any:
        reader = runtime().socket_connection()
        row = await reader.fetchone(sql.USER_ACTIVE, [user_id, user_id])
        if row is None:
            return None
        user = _user(row[:-1])
        user.has_offline_mark = row[-1]
        return user

    async def token_user(self, key: str) -> Any:
        row = await runtime().socket_connection().fetchone(sql.TOKEN_USER, [key])
        return None if row is None else _user(row)

    async def offline_mark_exists(self, user_id: int) -> bool:
        reader = runtime().socket_connection()
        row = await reader.fetchone(sql.OFFLINE_MARK_EXISTS, [user_id])
        return row is not None

    async def room_last_seqs(self, slugs: list[str]) -> dict[str, int]:
        reader = runtime().socket_connection()
        rows = await reader.fetchall(sql.ROOM_LAST_SEQS, [list(slugs)])
        return dict(rows)

    def room_counter_take(
        self, *, room_id: int, counter: Counter, count: int, user_id: int, now: datetime
    ) -> Taken | None:
        statement = sql.ROOM_SEQ_TAKE if counter == "last_seq" else sql.ROOM_CHANGE_TAKE
        with connection.cursor() as cursor:
            cursor.execute(statement, [count, room_id, user_id, now])
            row = cursor.fetchone()
        return None if row is None else Taken(*row)


def _user(row):
    return get_user_model().from_db(DEFAULT_DB_ALIAS, sql.USER_FIELDS, row)

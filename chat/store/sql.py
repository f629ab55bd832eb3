"""Every raw SQL statement of chat, with the ORM query each is equivalent to.

PostgreSQL's (run by postgres.PostgresStore; orm.OrmStore is their ORM twin), and
the two other statements chat runs itself: DEPLOYMENT_TOTALS (any database) and
TABLE_ROWS_ESTIMATE (PostgreSQL's search). Values are always bound parameters
(%s); only table and column names, from the models, are written into the text.
"""

from django.contrib.auth import get_user_model
from rest_framework.authtoken.models import Token

from chat.models import Membership, Message, Mute, OfflineMark, Room

_USERS = get_user_model()._meta.db_table
_TOKENS = Token._meta.db_table
_ROOMS = Room._meta.db_table
_MESSAGES = Message._meta.db_table
_MEMBERSHIPS = Membership._meta.db_table
_MUTES = Mute._meta.db_table
_OFFLINE = OfflineMark._meta.db_table


def _columns(model, alias=""):
    """The SELECT list of `model`'s concrete fields (`alias`-qualified if given)."""
    prefix = f"{alias}." if alias else ""
    return ", ".join(f'{prefix}"{f.column}"' for f in model._meta.concrete_fields)


def _attnames(model):
    return [f.attname for f in model._meta.concrete_fields]


# Model.from_db()'s field names for rows that start with _columns(model).
ROOM_FIELDS = _attnames(Room)
USER_FIELDS = _attnames(get_user_model())


def _insert_one(private):
    member = (
        f"AND EXISTS (SELECT 1 FROM {_MEMBERSHIPS} "
        "WHERE room_id = %s AND user_id = %s) "
    )
    return (
        f"WITH bump AS (UPDATE {_ROOMS} SET last_seq = last_seq + 1 "
        "WHERE id = %s AND NOT is_locked AND NOT EXISTS "
        f"(SELECT 1 FROM {_MUTES} WHERE user_id = %s AND until > %s) "
        f"{member if private else ''}RETURNING last_seq) "
        f"INSERT INTO {_MESSAGES} (room_id, seq, user_id, body, client_id, "
        "created_at) SELECT %s, last_seq, %s, %s, %s, %s FROM bump "
        "RETURNING 0, id, seq"
    )


# Params: room_id, user_id, created_at, room_id, user_id, body, client_id, created_at
# (the post's). A row (0, id, seq) if stored.
# ORM: OrmStore.message_insert: unlocked, unmuted .update(last_seq=F(…) + 1); create
MESSAGE_INSERT_ONE = _insert_one(private=False)

# MESSAGE_INSERT_ONE in a private room: also room_id, user_id after created_at.
# ORM: OrmStore.message_insert, the room also .filter(Exists(Membership…))
MESSAGE_INSERT_ONE_PRIVATE = _insert_one(private=True)


def _insert_many(private):
    # Rooms are locked in id order (`locked`), so that batches of several rooms from
    # several processes cannot deadlock; the bump then updates rows already locked.
    member = (
        f" AND (NOT post.private OR EXISTS (SELECT 1 FROM {_MEMBERSHIPS} vm "
        "WHERE vm.room_id = post.room_id AND vm.user_id = post.user_id))"
    )
    return (
        "WITH post AS (SELECT * FROM json_to_recordset(%s::json) AS p(ord int, "
        "room_id bigint, user_id bigint, body text, client_id text, "
        f"created_at timestamptz{', private boolean' if private else ''})), "
        "allowed AS (SELECT * FROM post WHERE NOT EXISTS (SELECT 1 FROM "
        f"{_MUTES} m WHERE m.user_id = post.user_id AND m.until > post.created_at)"
        f"{member if private else ''}), "
        "counted AS (SELECT room_id, count(*) AS n FROM allowed GROUP BY room_id), "
        f"locked AS (SELECT id FROM {_ROOMS} WHERE id IN "
        "(SELECT room_id FROM counted) AND NOT is_locked ORDER BY id FOR UPDATE), "
        f"bump AS (UPDATE {_ROOMS} r SET last_seq = r.last_seq + c.n FROM counted c "
        "WHERE r.id = c.room_id AND r.id IN (SELECT id FROM locked) "
        "RETURNING r.id, r.last_seq, c.n), "
        "numbered AS (SELECT a.*, b.last_seq - b.n + row_number() OVER "
        "(PARTITION BY a.room_id ORDER BY a.ord) AS seq "
        "FROM allowed a JOIN bump b ON b.id = a.room_id), "
        f"inserted AS (INSERT INTO {_MESSAGES} (room_id, seq, user_id, body, "
        "client_id, created_at) SELECT room_id, seq, user_id, body, client_id, "
        "created_at FROM numbered RETURNING id, room_id, seq) "
        "SELECT n.ord, i.id, i.seq FROM inserted i "
        "JOIN numbered n ON n.room_id = i.room_id AND n.seq = i.seq"
    )


# Param: a JSON array of posts {ord, room_id, user_id, body, client_id, created_at};
# rows (ord, id, seq) for the stored ones, seqs in `ord` order per room.
# ORM: OrmStore.message_insert for each post, in `ord` order
MESSAGE_INSERT_MANY = _insert_many(private=False)

# MESSAGE_INSERT_MANY with posts to private rooms: each post has `private` too.
# ORM: OrmStore.message_insert for each post, in `ord` order
MESSAGE_INSERT_MANY_PRIVATE = _insert_many(private=True)

# Params: slug, "public", user_id, is_staff, "room", user_id, joined_at. A row: the
# room's columns, then whether the membership is new. The visibility condition is
# chat.access's rule (room_visible_q).
# ORM: access.room_get_visible(…); Membership.objects.get_or_create(user=, room=)
ROOM_JOIN = (
    f"WITH room AS (SELECT {_columns(Room)} FROM {_ROOMS} r "
    "WHERE slug = %s AND (r.visibility = %s OR EXISTS (SELECT 1 "
    f"FROM {_MEMBERSHIPS} vm WHERE vm.room_id = r.id AND vm.user_id = %s) "
    "OR (%s AND r.kind = %s))), "
    f"joined AS (INSERT INTO {_MEMBERSHIPS} (user_id, room_id, joined_at) "
    "SELECT %s, id, %s FROM room ON CONFLICT (room_id, user_id) DO NOTHING "
    "RETURNING 1) "
    "SELECT room.*, EXISTS (SELECT 1 FROM joined) FROM room"
)

# Params: user_id, user_id. A row: the user's columns, then has_offline_mark.
# ORM: User.objects.filter(pk=, is_active=True).annotate(has_offline_mark=Exists(…))
USER_ACTIVE = (
    f"SELECT {_columns(get_user_model())}, EXISTS (SELECT 1 FROM {_OFFLINE} "
    f"WHERE user_id = %s) FROM {_USERS} WHERE id = %s AND is_active"
)

# Param: the token's key. A row: the user's columns.
# ORM: User.objects.filter(auth_token__key=key, is_active=True).first()
TOKEN_USER = (
    f"SELECT {_columns(get_user_model(), 'u')} FROM {_TOKENS} t "
    f"JOIN {_USERS} u ON u.id = t.user_id WHERE t.key = %s AND u.is_active"
)

# Param: user_id.
# ORM: OfflineMark.objects.filter(user_id=user_id).exists()
OFFLINE_MARK_EXISTS = f"SELECT 1 FROM {_OFFLINE} WHERE user_id = %s"

# Param: a list of slugs. Rows (slug, last_seq).
# ORM: Room.objects.filter(slug__in=slugs).values_list("slug", "last_seq")
ROOM_LAST_SEQS = f"SELECT slug, last_seq FROM {_ROOMS} WHERE slug = ANY(%s)"


def _counter_take(column):
    return (
        f"UPDATE {_ROOMS} SET {column} = {column} + %s WHERE id = %s "
        f"RETURNING {column}, is_locked, (SELECT id FROM {_MUTES} "
        "WHERE user_id = %s AND until > %s ORDER BY until DESC LIMIT 1)"
    )


# Params: count, room_id, user_id, now. A row (last_seq, is_locked, mute id or null).
# ORM: OrmStore.room_counter_take: .update(last_seq=F("last_seq") + count), then read
ROOM_SEQ_TAKE = _counter_take("last_seq")

# ROOM_SEQ_TAKE for the room's change counter.
# ORM: OrmStore.room_counter_take: .update(last_change=F(…) + count), then read
ROOM_CHANGE_TAKE = _counter_take("last_change")

# Any database. A row (users, rooms).
# ORM: (User.objects.count(), Room.objects.count()), in one statement
DEPLOYMENT_TOTALS = (
    f"SELECT (SELECT COUNT(*) FROM {_USERS}), (SELECT COUNT(*) FROM {_ROOMS})"
)

# PostgreSQL's estimate of a table's rows (from its last ANALYZE). Param: the table.
# ORM: none (a catalog read)
TABLE_ROWS_ESTIMATE = "SELECT reltuples FROM pg_class WHERE oid = %s::regclass"

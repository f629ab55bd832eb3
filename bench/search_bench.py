"""Search latency over a million stored messages on PostgreSQL (a benchmark).

    DATABASE_URL=postgres://postgres@127.0.0.1:5432/vf_edits_bench \\
        .venv/bin/python bench/search_bench.py --messages 1000000 --runs 50

Migrates the database named in DATABASE_URL (use a scratch one), then fills rooms
`bench-0` … `bench-N` with `--messages` messages in one INSERT ... SELECT over
generate_series (bodies of 6–12 words drawn from a 2,000-word vocabulary with a
skewed distribution, a few rare words; the GIN index is kept up to date as they go
in). A database that already holds them is reused (`--refill` makes them again). Then
times `chat.selectors.messages_search`, the function behind GET /api/search/ (visible
rooms, tombstones excluded, newest first, one page of 50), for each query kind and
prints p50 / p99 / max in milliseconds and how many messages each query matches.
"""

import argparse
import os
import statistics
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
os.environ.setdefault("DJANGO_SETTINGS_MODULE", "voiceflow.settings")
os.environ.setdefault("SECRET_KEY", "benchmark-only")

import django  # noqa: E402

django.setup()

from django.contrib.auth import get_user_model  # noqa: E402
from django.core.management import call_command  # noqa: E402
from django.db import connection  # noqa: E402

from chat.models import Message, Room  # noqa: E402
from chat.selectors import messages_search  # noqa: E402

ROOMS = 20
USERS = 50
VOCABULARY = 2000
# Words no generated body holds but these few: bodies i with i % RARE_EVERY == 0.
RARE_WORD = "quokka"
RARE_EVERY = 20000

# (label, query, room filter)
QUERIES = [
    ("common word", "w1", None),
    ("mid word", "w150", None),
    ("rare word", RARE_WORD, None),
    ("two words", "w2 w40", None),
    ("phrase", '"w1 w2"', None),
    ("common + room", "w1", "bench-7"),
    ("rare + room", RARE_WORD, "bench-0"),
    ("no match", "nosuchword", None),
]


def fill(total):
    """Rooms, users and `total` messages in one statement; then ANALYZE."""
    users = get_user_model()
    people = [
        users.objects.get_or_create(username=f"bench-user-{n}")[0] for n in range(USERS)
    ]
    rooms = [
        Room.objects.get_or_create(slug=f"bench-{n}", defaults={"name": f"B{n}"})[0]
        for n in range(ROOMS)
    ]
    room_ids = [room.id for room in rooms]
    Message.objects.filter(room_id__in=room_ids).delete()
    # Word k of message i: w<floor(2000 * r^3)>, r a hash of (i, k) in [0, 1), so
    # low-numbered words are common (w1 in several percent of messages), high ones rare.
    word = (
        "'w' || floor({v} * power(((i * 7919 + {k} * 104729) %% 1000003) "
        "/ 1000003.0, 3))::int"
    )
    words = " || ' ' || ".join(word.format(v=VOCABULARY, k=k) for k in range(1, 7))
    extra = " || ' ' || ".join(word.format(v=VOCABULARY, k=k) for k in range(7, 13))
    table = Message._meta.db_table
    started = time.perf_counter()
    with connection.cursor() as cursor:
        cursor.execute(
            f"INSERT INTO {table} (room_id, seq, user_id, body, client_id, "
            "created_at, change_seq) "
            "SELECT (%s::bigint[])[1 + i %% %s], 1 + i / %s, "
            "(%s::bigint[])[1 + i %% %s], "
            f"{words} || CASE WHEN i %% 3 = 0 THEN ' ' || {extra} ELSE '' END "
            "|| CASE WHEN i %% %s = 0 THEN ' ' || %s ELSE '' END, "
            "NULL, now() - (%s - i) * interval '1 second', 0 "
            "FROM generate_series(0::bigint, %s - 1) AS i",
            [
                room_ids,
                ROOMS,
                ROOMS,
                [person.id for person in people],
                USERS,
                RARE_EVERY,
                RARE_WORD,
                total,
                total,
            ],
        )
        for room_id in room_ids:
            cursor.execute(
                f"UPDATE {Room._meta.db_table} SET last_seq = "
                f"(SELECT COALESCE(max(seq), 0) FROM {table} WHERE room_id = %s) "
                "WHERE id = %s",
                [room_id, room_id],
            )
        cursor.execute(f"ANALYZE {table}")
    print(f"stored {total:,} messages in {time.perf_counter() - started:.1f} s")


def stored(total):
    rooms = Room.objects.filter(slug__startswith="bench-").values_list("id", flat=True)
    return Message.objects.filter(room_id__in=list(rooms)).count() >= total


def matches(query, room):
    """How many messages the query matches (one count, outside the timings)."""
    from django.contrib.postgres.search import SearchQuery, SearchVector

    rows = Message.objects.annotate(
        document=SearchVector("body", config="simple")
    ).filter(document=SearchQuery(query, config="simple", search_type="websearch"))
    if room:
        rows = rows.filter(room__slug=room)
    return rows.count()


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--messages", type=int, default=1_000_000)
    parser.add_argument("--runs", type=int, default=50)
    parser.add_argument("--refill", action="store_true")
    parser.add_argument("--counts", action="store_true", help="also count matches")
    args = parser.parse_args()
    if connection.vendor != "postgresql":
        sys.exit("Set DATABASE_URL to a scratch PostgreSQL database.")
    call_command("migrate", verbosity=0)
    if args.refill or not stored(args.messages):
        fill(args.messages)
    else:
        print(f"reusing the {args.messages:,} stored messages (--refill to redo)")
    user = get_user_model().objects.get(username="bench-user-0")
    print(f"{'query':<15} {'q':<12} {'p50 ms':>8} {'p99 ms':>8} {'max ms':>8}  results")
    for label, query, room in QUERIES:
        messages_search(user=user, query=query, room=room, limit=50)  # warm
        timings = []
        for _ in range(args.runs):
            started = time.perf_counter()
            rows, _more = messages_search(user=user, query=query, room=room, limit=50)
            timings.append((time.perf_counter() - started) * 1000)
        timings.sort()
        p99 = timings[min(len(timings) - 1, round(0.99 * (len(timings) - 1)))]
        count = f" of {matches(query, room):,}" if args.counts else ""
        print(
            f"{label:<15} {query:<12} {statistics.median(timings):>8.1f} "
            f"{p99:>8.1f} {timings[-1]:>8.1f}  {len(rows)}{count}"
        )


if __name__ == "__main__":
    main()

"""The room list's cost for a user in many rooms with many messages.

    DATABASE_URL=postgres://postgres@127.0.0.1:5432/<scratch db> SECRET_KEY=x \\
        python bench/rooms_bench.py --rooms 100 --messages 100000

Seeds the scratch database (migrated first): one reader who is a member of N rooms
(a third private, and DMs among them) holding M messages in all, by others, with a
mention of the reader every 50th; some rooms read half-way. Then times `GET
/api/rooms/` as that reader through Django's test client (no network) and prints
the queries it ran and the median time, with the plan of its statement. Never point
it at a database that matters: it adds rows.
"""

import argparse
import os
import statistics
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
os.environ.setdefault("DJANGO_SETTINGS_MODULE", "voiceflow.settings")

import django  # noqa: E402

django.setup()

from django.contrib.auth import get_user_model  # noqa: E402
from django.db import connection  # noqa: E402
from django.test.utils import CaptureQueriesContext  # noqa: E402
from rest_framework.test import APIClient  # noqa: E402

from chat.models import Membership, Message, MessageMention, Room  # noqa: E402

PREFIX = "rooms-bench"


def seed(rooms, messages):
    users = get_user_model().objects
    reader = users.get_or_create(username=f"{PREFIX}-reader")[0]
    writers = [users.get_or_create(username=f"{PREFIX}-w{n}")[0] for n in range(5)]
    if Room.objects.filter(slug__startswith=PREFIX).count() >= rooms:
        return reader
    per_room = messages // rooms
    for n in range(rooms):
        direct = n % 10 == 0
        room = Room.objects.create(
            slug=f"{PREFIX}-{n}",
            name=f"Bench {n}",
            visibility="private" if direct or n % 3 == 0 else "public",
            kind="direct" if direct else "room",
            last_seq=per_room,
        )
        Membership.objects.bulk_create(
            [
                Membership(
                    room=room, user=reader, last_read_seq=per_room // 2 * (n % 2)
                ),
                *[Membership(room=room, user=writer) for writer in writers],
            ]
        )
        rows = [
            Message(
                room=room,
                seq=seq,
                user=writers[seq % len(writers)],
                body=f"@{reader.username} look" if seq % 50 == 0 else f"m {seq}",
                mentions=[reader.username] if seq % 50 == 0 else None,
            )
            for seq in range(1, per_room + 1)
        ]
        Message.objects.bulk_create(rows, batch_size=5000)
        MessageMention.objects.bulk_create(
            MessageMention(message=m, user=reader, room=room, seq=m.seq)
            for m in Message.objects.filter(room=room, mentions__isnull=False)
        )
    with connection.cursor() as cursor:
        cursor.execute("ANALYZE")
    return reader


def timed(client, path, runs):
    """(median ms, queries, response) of GET path."""
    times = []
    for _ in range(runs):
        with CaptureQueriesContext(connection) as queries:
            started = time.perf_counter()
            response = client.get(path)
            times.append((time.perf_counter() - started) * 1000)
        assert response.status_code == 200, (path, response.status_code)
    return statistics.median(times), queries, response


def main(args):
    if connection.vendor != "postgresql":
        sys.exit("rooms_bench needs PostgreSQL: set DATABASE_URL.")
    reader = seed(args.rooms, args.messages)
    client = APIClient(HTTP_HOST="127.0.0.1")
    client.force_authenticate(reader)
    total = Message.objects.filter(room__slug__startswith=PREFIX).count()
    member_of = Membership.objects.filter(user=reader).count()
    ms, queries, response = timed(client, "/api/rooms/", args.runs)
    results = response.json()["results"]
    print(
        f"reader in {member_of} rooms, {total} messages in them; "
        f"GET /api/rooms/ (page of {len(results)}), median of {args.runs} runs:"
    )
    print(f"  {len(queries)} queries, {ms:.1f} ms")
    unread = sum(room["unread"] or 0 for room in results)
    mentions = sum(room["mentions"] or 0 for room in results)
    print(f"  unread {unread}, mentions {mentions} across the page")
    if args.explain:
        statement = max(queries.captured_queries, key=lambda q: len(q["sql"]))
        with connection.cursor() as cursor:
            cursor.execute("EXPLAIN (ANALYZE, BUFFERS) " + statement["sql"])
            print("\n".join(row[0] for row in cursor.fetchall()))


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rooms", type=int, default=100)
    parser.add_argument("--messages", type=int, default=100_000)
    parser.add_argument("--runs", type=int, default=11)
    parser.add_argument("--explain", action="store_true", help="print the plan")
    main(parser.parse_args())

"""Moderation admin page times with a big message table.

    DATABASE_URL=postgres://postgres@127.0.0.1:5432/<scratch db> SECRET_KEY=x \\
        python bench/admin_bench.py --messages 100000

Seeds the scratch database (migrated first) up to N messages in one room, then times
the message admin's list pages through Django's test client (no network): the first
page, a deep page, a room search, a body search, the deleted filter. Never point it
at a database that matters: it adds rows.
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
from django.test import Client  # noqa: E402
from django.test.utils import CaptureQueriesContext  # noqa: E402

from chat.models import Message, Room  # noqa: E402

ROOM = "admin-bench"


def seed(count):
    users = get_user_model().objects
    author = users.get_or_create(username="admin-bench-author")[0]
    room = Room.objects.get_or_create(slug=ROOM, defaults={"name": "Admin bench"})[0]
    have = Message.objects.filter(room=room).count()
    batch = []
    for seq in range(have + 1, count + 1):
        body = f"bench message {seq} about topic{seq % 97}"
        batch.append(Message(room=room, seq=seq, user=author, body=body))
        if len(batch) == 5000:
            Message.objects.bulk_create(batch)
            batch = []
    Message.objects.bulk_create(batch)
    Room.objects.filter(pk=room.pk).update(last_seq=max(count, have))
    return Message.objects.count()


def timed(client, path, runs):
    """(median ms, queries) of GET path."""
    times = []
    for _ in range(runs):
        with CaptureQueriesContext(connection) as queries:
            started = time.perf_counter()
            response = client.get(path)
            times.append((time.perf_counter() - started) * 1000)
        assert response.status_code == 200, (path, response.status_code)
    return statistics.median(times), len(queries)


def main(args):
    total = seed(args.messages)
    moderator = get_user_model().objects.get_or_create(
        username="admin-bench", defaults={"is_staff": True, "is_superuser": True}
    )[0]
    client = Client(HTTP_HOST="127.0.0.1")
    client.force_login(moderator)
    print(f"{total} messages in the table; median of {args.runs} runs each:")
    pages = {
        "first page": "/admin/chat/message/",
        "page 1000": "/admin/chat/message/?p=1000",
        "room search": f"/admin/chat/message/?q={ROOM}",
        "username search": "/admin/chat/message/?q=admin-bench-author",
        "body search": "/admin/chat/message/?q=topic42",
        "deleted filter": "/admin/chat/message/?deleted=yes",
        "moderation log": "/admin/chat/moderationaction/",
    }
    for name, path in pages.items():
        ms, queries = timed(client, path, args.runs)
        print(f"  {name:<16} {ms:8.1f} ms  {queries:2d} queries  {path}")


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--messages", type=int, default=100_000)
    parser.add_argument("--runs", type=int, default=5)
    main(parser.parse_args())

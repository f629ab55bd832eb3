"""What a stored message costs PostgreSQL, by group-commit batch size (a benchmark).

    DATABASE_URL=postgres://postgres@127.0.0.1:5432/vfbench \
        .venv/bin/python bench/insert_bench.py --posts 3000

Migrates the database named in DATABASE_URL (use a scratch one: it gets rooms and
messages), then runs the socket path's insert statement
(`chat.store.postgres.insert_statement`) on a connection made like the socket path's
(autocommit; VOICEFLOW_DB_PREPARED applies), one batch after another, for batches of
1, 2, 5 and 20 posts spread over 10 rooms, each size warmed up first. Prints posts/s
and the PostgreSQL backend's CPU per post (from /proc: the database must run on this
machine).
"""

import argparse
import os
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
os.environ.setdefault("DJANGO_SETTINGS_MODULE", "voiceflow.settings")
os.environ.setdefault("SECRET_KEY", "benchmark-only")

import django  # noqa: E402

django.setup()

import psycopg  # noqa: E402
from django.contrib.auth import get_user_model  # noqa: E402
from django.core.management import call_command  # noqa: E402
from django.db import connection  # noqa: E402
from django.utils import timezone  # noqa: E402

from chat.models import Room  # noqa: E402
from chat.store import Post  # noqa: E402
from chat.store.postgres import insert_statement  # noqa: E402
from voiceflow.runtime.db import _loop_connection_params  # noqa: E402


def backend_cpu_seconds(pid):
    with open(f"/proc/{pid}/stat") as stat:
        fields = stat.read().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def run(conn, rooms, user_id, posts, size, quiet=False):
    now = timezone.now
    pid = conn.info.backend_pid
    started, cpu = time.perf_counter(), backend_cpu_seconds(pid)
    for first in range(0, posts, size):
        batch = [
            Post(
                rooms[(first + n) % len(rooms)], user_id, "x" * 100, None, now(), False
            )
            for n in range(size)
        ]
        sql, params = insert_statement(batch)
        assert len(conn.execute(sql, params).fetchall()) == size
    wall = time.perf_counter() - started
    cpu = backend_cpu_seconds(pid) - cpu
    if quiet:
        return
    print(
        f"batch of {size:>2}: {posts / wall:>8,.0f} posts/s"
        f"  PostgreSQL CPU {cpu / posts * 1e6:6.1f} us/post"
        f"  wall {wall / posts * 1e6:6.1f} us/post"
    )


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--posts", type=int, default=3000, help="posts per batch size")
    args = parser.parse_args()
    if connection.vendor != "postgresql":
        raise SystemExit("set DATABASE_URL to a scratch PostgreSQL database")
    call_command("migrate", verbosity=0)
    user = get_user_model().objects.get_or_create(username="insert-bench")[0]
    rooms = [
        Room.objects.get_or_create(slug=f"bench-{n}", defaults={"name": f"B {n}"})[0].id
        for n in range(10)
    ]
    # The parameters of the socket path's own connections (voiceflow.runtime.db).
    with psycopg.connect(**_loop_connection_params(), autocommit=True) as conn:
        for size in (1, 2, 5, 20):
            run(conn, rooms, user.id, 100 * size, size, quiet=True)  # warm, prepared
            run(conn, rooms, user.id, args.posts, size)


if __name__ == "__main__":
    main()

"""The room page's sidebar for a user in many rooms: how soon every badge is shown.

    DATABASE_URL=postgres://postgres@127.0.0.1:5432/<scratch db> SECRET_KEY=x \\
        [REDIS_URL=redis://127.0.0.1:6379/<db> REDIS_KEY_PREFIX=<prefix>] \\
        python bench/page_rooms_bench.py --rooms 100 --messages 100000 --loads 5

Seeds the scratch database as bench/rooms_bench.py does (a reader in N rooms holding
M messages by others, unread in many of them), then prints the queries and median ms
of `GET /api/rooms/?mine=1` (what the sidebar loads) for that reader, starts a server
process (the Procfile's web line) on the same database (and Redis, if set), opens the
room page in Debian's Chromium and prints the time from navigation start until the
sidebar shows every room with its unread and mention counts as the server has them
(p50 and max over the loads). Never point it at a database that matters.
"""

import argparse
import os
import statistics
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
sys.path.insert(0, str(Path(__file__).resolve().parent))
os.environ.setdefault("DJANGO_SETTINGS_MODULE", "voiceflow.settings")
# The server process hashes with the fast hasher: the reader's password must match it.
os.environ["VOICEFLOW_FAST_PASSWORD_HASHER"] = "1"

import rooms_bench  # noqa: E402  (sets Django up)
from django.db import connection  # noqa: E402
from rest_framework.test import APIClient  # noqa: E402

from chat.models import Membership  # noqa: E402
from voiceflow.tests.browsers import PASSWORD, in_db_thread, launch  # noqa: E402
from voiceflow.tests.servers import ServerProcess  # noqa: E402

SIDEBAR_PATH = "/api/rooms/?mine=1"

# True once every room of `expected` ({slug: [unread, mentions]}) shows those counts.
ALL_SHOWN = """(expected) => {
    const items = document.querySelectorAll('#sidebar li[data-slug]');
    if (items.length !== Object.keys(expected).length) return false;
    for (const li of items) {
        const want = expected[li.dataset.slug];
        if (!want) return false;
        if (li.querySelector('a[aria-current="page"]')) continue;  // the open room
        if (li.dataset.unread !== String(want[0])) return false;
        if (li.dataset.mentions !== String(want[1])) return false;
    }
    return performance.now();
}"""


# When the page had the sidebar's room list (its first page) in hand.
ANSWERED = """() => {
    const entry = performance.getEntriesByType('resource')
        .find((e) => e.name.includes('/api/rooms/?mine=1'));
    return entry ? entry.responseEnd : null;
}"""


def expected_counts(client):
    rooms = []
    path = SIDEBAR_PATH
    while path:
        data = client.get(path).json()
        rooms += data["results"]
        path = data["next"]
    return {room["slug"]: [room["unread"], room["mentions"]] for room in rooms}


def main(args):
    if connection.vendor != "postgresql":
        sys.exit("page_rooms_bench needs PostgreSQL: set DATABASE_URL.")
    reader = rooms_bench.seed(args.rooms, args.messages)
    reader.set_password(PASSWORD)
    reader.save(update_fields=["password"])
    client = APIClient(HTTP_HOST="127.0.0.1")
    client.force_authenticate(reader)
    ms, queries, response = rooms_bench.timed(client, SIDEBAR_PATH, args.runs)
    member_of = Membership.objects.filter(user=reader).count()
    data = response.json()
    print(
        f"reader in {member_of} rooms; GET {SIDEBAR_PATH} ({data['count']} rooms, "
        f"{len(data['results'])} on the first page), median of {args.runs} runs: "
        f"{len(queries)} queries, {ms:.1f} ms"
    )
    from playwright.sync_api import sync_playwright

    server = ServerProcess(VOICEFLOW_RATE_LIMIT_MULTIPLIER="100").start()
    try:
        open_slug = f"{rooms_bench.PREFIX}-1"
        with sync_playwright() as playwright:
            browser = launch(playwright)
            context = browser.new_context(viewport={"width": 1280, "height": 800})
            page = context.new_page()
            page.goto(f"{server.base}/login/?next=/rooms/{open_slug}/")
            page.get_by_label("Username").fill(reader.username)
            page.get_by_label("Password").fill(PASSWORD)
            page.get_by_role("button", name="Log in").click()
            page.wait_for_url(f"**/rooms/{open_slug}/")
            shown, answered = [], []
            for _ in range(args.loads):
                expected = in_db_thread(expected_counts, client)  # off the loop
                unread_rooms = sum(1 for unread, _ in expected.values() if unread)
                page.goto(f"{server.base}/rooms/{open_slug}/")
                handle = page.wait_for_function(
                    ALL_SHOWN, arg=expected, polling="raf", timeout=60_000
                )
                shown.append(handle.json_value())
                answered.append(page.evaluate(ANSWERED))
            browser.close()
    finally:
        server.stop()
    print(
        f"page /rooms/{open_slug}/: every room's badge shown (of {len(expected)} "
        f"rooms, {unread_rooms} with unread) after p50 {statistics.median(shown):.0f} "
        f"ms, max {max(shown):.0f} ms from navigation start, over {len(shown)} loads"
    )
    arrived = statistics.median(answered)
    print(f"  (the room list's response had arrived at p50 {arrived:.0f} ms)")


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rooms", type=int, default=100)
    parser.add_argument("--messages", type=int, default=100_000)
    parser.add_argument("--runs", type=int, default=11, help="API timing runs")
    parser.add_argument("--loads", type=int, default=5, help="page loads")
    main(parser.parse_args())

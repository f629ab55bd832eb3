import asyncio
import threading
import time

import pytest
from asgiref.sync import sync_to_async
from django.conf import settings
from django.db import (
    DatabaseError,
    IntegrityError,
    connection,
    connections,
    transaction,
)
from prometheus_client import REGISTRY

from chat import services
from chat.models import Room
from voiceflow.runtime import db, runtime

# The writer threads have connections of their own: only committed rows are visible.
pytestmark = pytest.mark.django_db(transaction=True)

postgresql_only = pytest.mark.skipif(
    connection.vendor != "postgresql", reason="row locks, pg_terminate_backend"
)


def on_room_thread(room_id, func, **kwargs):
    return db.room_database_sync_to_async(room_id)(func)(**kwargs)


def backend_pid():
    with connection.cursor() as cursor:
        cursor.execute("SELECT pg_backend_pid()")
        return cursor.fetchone()[0]


def rooms_on_two_threads(user):
    """Two rooms whose posts go to different writer threads."""
    first = services.room_create(user=user, name="First")
    while True:
        other = services.room_create(user=user, name=f"Other {time.monotonic_ns()}")
        if db._room_executor(other.id) is not db._room_executor(first.id):
            return first, other


def test_a_room_always_gets_the_same_thread_and_rooms_spread_over_all():
    executors = {db._room_executor(room_id) for room_id in range(100)}
    assert len(executors) == settings.DB_THREADS
    assert db._room_executor(7) is db._room_executor(7 + settings.DB_THREADS)


async def test_one_rooms_concurrent_posts_get_seqs_in_submission_order(alice, lobby):
    calls = [
        on_room_thread(lobby.id, services.message_post, user=alice, room=lobby, body=n)
        for n in map(str, range(40))
    ]
    results = await asyncio.gather(*calls)
    assert [int(r.message["body"]) for r in results] == list(range(40))
    assert [r.message["seq"] for r in results] == list(range(1, 41))


@postgresql_only
async def test_a_room_waiting_on_a_row_lock_does_not_hold_up_another_room(alice):
    if settings.DB_THREADS < 2:
        pytest.skip("one writer thread")
    locked, free = await sync_to_async(rooms_on_two_threads)(alice)
    holding, release = threading.Event(), threading.Event()

    def hold_the_room_row():
        with transaction.atomic():
            list(Room.objects.select_for_update().filter(pk=locked.pk))
            holding.set()
            release.wait(30)
        connections.close_all()

    holder = threading.Thread(target=hold_the_room_row)
    holder.start()
    try:
        assert await asyncio.to_thread(holding.wait, 10)
        blocked = asyncio.ensure_future(
            on_room_thread(
                locked.id, services.message_post, user=alice, room=locked, body="a"
            )
        )
        # The locked room's insert is really waiting on the lock, not just queued.
        assert await asyncio.to_thread(lock_waiter_pid), "it never reached the lock"
        other = await asyncio.wait_for(
            on_room_thread(
                free.id, services.message_post, user=alice, room=free, body="b"
            ),
            timeout=10,
        )
        assert other.message["seq"] == 1
        assert not blocked.done()
    finally:
        release.set()
        await asyncio.to_thread(holder.join, 10)
    assert (await asyncio.wait_for(blocked, 10)).message["seq"] == 1


def lock_waiter_pid(timeout=10):
    """The backend of a writer thread waiting on a lock (None after `timeout`)."""
    deadline = time.monotonic() + timeout
    try:
        while time.monotonic() < deadline:
            with connection.cursor() as cursor:
                cursor.execute(
                    "SELECT pid FROM pg_stat_activity WHERE wait_event_type = 'Lock'"
                    " AND datname = current_database()"
                )
                row = cursor.fetchone()
            if row:
                return row[0]
            time.sleep(0.02)
        return None
    finally:
        connections.close_all()  # a pool thread: PostgreSQL must drop the test db


async def test_a_database_error_does_not_poison_the_threads_next_call(lobby):
    def bad_query():
        with connection.cursor() as cursor:
            cursor.execute("SELECT * FROM no_such_table")

    def room_count():
        return Room.objects.filter(pk=lobby.pk).count()

    with pytest.raises(DatabaseError):
        await on_room_thread(lobby.id, bad_query)
    assert await on_room_thread(lobby.id, room_count) == 1


@postgresql_only
async def test_a_thread_whose_connection_was_killed_reconnects_after_one_error(lobby):
    def terminate(pid):
        with connection.cursor() as cursor:
            cursor.execute("SELECT pg_terminate_backend(%s)", [pid])

    pid = await on_room_thread(lobby.id, backend_pid)
    await sync_to_async(terminate)(pid)
    try:
        await on_room_thread(lobby.id, backend_pid)
    except DatabaseError:
        pass  # this call found the connection dead (unless upkeep was due first)
    assert await on_room_thread(lobby.id, backend_pid) not in (None, pid)


async def test_close_connections_closes_every_writer_threads_connection(lobby):
    for room_id in range(settings.DB_THREADS):
        await on_room_thread(room_id, Room.objects.count)
    db.close_connections()

    def is_open():
        return connection.connection is not None

    for room_id in range(settings.DB_THREADS):
        assert not await db.room_database_sync_to_async(room_id)(is_open)()


# Room writers: the socket path's inserts on async connections of the event loop.


def send_on_loop(user, room, body):
    """A socket's message_send (no membership upsert: it is the loop path)."""
    return services.message_send(
        user=user, room=room, body=body, ensure_membership=False
    )


@postgresql_only
async def test_one_rooms_concurrent_socket_posts_get_seqs_in_call_order(
    alice, lobby, set_rate
):
    set_rate("message", 100)
    results = await asyncio.gather(
        *[send_on_loop(alice, lobby, str(n)) for n in range(40)]
    )
    assert [int(r.message["body"]) for r in results] == list(range(40))
    assert [r.message["seq"] for r in results] == list(range(1, 41))
    assert await runtime().room_writer(lobby.id).fetchone(
        "SELECT count(*) FROM chat_message WHERE room_id = %s", [lobby.id]
    ) == (40,)


@postgresql_only
async def test_a_room_writer_waiting_on_a_row_lock_does_not_hold_up_another(alice):
    if settings.DB_THREADS < 2:
        pytest.skip("one writer")
    first = await sync_to_async(services.room_create)(user=alice, name="First")
    other = first
    while runtime().room_writer(other.id) is runtime().room_writer(first.id):
        other = await sync_to_async(services.room_create)(
            user=alice, name=f"Other {time.monotonic_ns()}"
        )
    holding, release = threading.Event(), threading.Event()

    def hold_the_room_row():
        with transaction.atomic():
            list(Room.objects.select_for_update().filter(pk=first.pk))
            holding.set()
            release.wait(30)
        connections.close_all()

    holder = threading.Thread(target=hold_the_room_row)
    holder.start()
    try:
        assert await asyncio.to_thread(holding.wait, 10)
        blocked = asyncio.ensure_future(send_on_loop(alice, first, "a"))
        assert await asyncio.to_thread(lock_waiter_pid), "it never reached the lock"
        done = await asyncio.wait_for(send_on_loop(alice, other, "b"), timeout=10)
        assert done.message["seq"] == 1
        assert not blocked.done()
    finally:
        release.set()
        await asyncio.to_thread(holder.join, 10)
    assert (await asyncio.wait_for(blocked, 10)).message["seq"] == 1


@postgresql_only
async def test_a_room_writer_turns_psycopg_errors_into_djangos(alice, lobby):
    writer = runtime().room_writer(lobby.id)
    with pytest.raises(DatabaseError):
        await writer.fetchone("SELECT * FROM no_such_table", [])
    sent = await send_on_loop(alice, lobby, "first")
    with pytest.raises(IntegrityError):  # a second row with seq 1
        await writer.fetchone(
            "INSERT INTO chat_message (room_id, seq, user_id, body, created_at)"
            " VALUES (%s, %s, %s, 'x', now())",
            [lobby.id, sent.message["seq"], alice.id],
        )
    assert (await send_on_loop(alice, lobby, "second")).message["seq"] == 2


@postgresql_only
async def test_a_room_writer_whose_connection_was_killed_reconnects(alice, lobby):
    writer = runtime().room_writer(lobby.id)
    (pid,) = await writer.fetchone("SELECT pg_backend_pid()", [])

    def terminate():
        with connection.cursor() as cursor:
            cursor.execute("SELECT pg_terminate_backend(%s)", [pid])
        connections.close_all()

    await asyncio.to_thread(terminate)
    with pytest.raises(DatabaseError):
        await send_on_loop(alice, lobby, "lost")  # not stored, so never acked
    assert (await send_on_loop(alice, lobby, "again")).message["seq"] == 1
    assert (await writer.fetchone("SELECT pg_backend_pid()", []))[0] != pid


def tenth(items):
    """A test statement: (index, 10 / item) for each item; no row for 10."""
    return (
        "SELECT i, 10 / x FROM unnest(%s::int[], %s::int[]) AS t(i, x) WHERE x <> 10",
        [list(range(len(items))), items],
    )


@postgresql_only
async def test_calls_queued_while_a_writer_is_busy_run_as_one_statement(monkeypatch):
    writer = runtime().room_writer(1)
    runs = []
    monkeypatch.setattr(db, "BATCH_MAX", 3)

    def counted(items):
        runs.append(list(items))
        return tenth(items)

    batches = REGISTRY.get_sample_value("voiceflow_db_batch_size_count") or 0

    results = await asyncio.gather(*[writer.batched(counted, x) for x in (1, 2, 10, 5)])
    assert results == [(10,), (5,), None, (2,)]  # 10 has no row
    assert runs == [[1, 2, 10], [5]]  # in submission order, BATCH_MAX at a time
    assert REGISTRY.get_sample_value("voiceflow_db_batch_size_count") == batches + 2


@postgresql_only
async def test_a_failing_batch_fails_each_of_its_calls_and_the_next_batch_runs():
    writer = runtime().room_writer(1)
    failing = [writer.batched(tenth, x) for x in (2, 0)]
    outcomes = await asyncio.gather(*failing, return_exceptions=True)
    assert all(isinstance(outcome, DatabaseError) for outcome in outcomes)
    assert await writer.batched(tenth, 5) == (2,)


@postgresql_only
async def test_a_batch_hitting_a_constraint_reruns_its_items_one_by_one(alice, lobby):
    writer = runtime().room_writer(lobby.id)
    sent = await send_on_loop(alice, lobby, "first")

    def insert(seqs):  # seq 1 is taken: only that item fails
        return (
            "INSERT INTO chat_message (room_id, seq, user_id, body, created_at) "
            "SELECT %s, s, %s, 'x', now() FROM unnest(%s::bigint[]) AS s "
            "RETURNING array_position(%s::bigint[], seq) - 1, id",
            [lobby.id, alice.id, seqs, seqs],
        )

    seqs = [100, sent.message["seq"], 101]
    outcomes = await asyncio.gather(
        *[writer.batched(insert, seq) for seq in seqs], return_exceptions=True
    )
    assert isinstance(outcomes[1], IntegrityError)
    assert outcomes[0] is not None and outcomes[2] is not None


@postgresql_only
def test_the_socket_paths_connections_prepare_statements_unless_turned_off(settings):
    assert db._loop_connection_params()["prepare_threshold"] == 5
    settings.DB_PREPARED = False  # VOICEFLOW_DB_PREPARED=0: PgBouncer before 1.21
    assert db._loop_connection_params()["prepare_threshold"] is None

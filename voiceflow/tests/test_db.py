import asyncio
import gc
import threading
import time

import pytest
from asgiref.sync import async_to_sync, sync_to_async
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
from voiceflow.runtime import db, runtime, runtimes_abandon_closed

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


def activity_pid(where, params=(), timeout=10):
    """The backend pg_stat_activity lists under `where` (None after `timeout`)."""
    deadline = time.monotonic() + timeout
    try:
        while time.monotonic() < deadline:
            with connection.cursor() as cursor:
                cursor.execute(
                    f"SELECT pid FROM pg_stat_activity WHERE {where}", params
                )
                row = cursor.fetchone()
            if row:
                return row[0]
            time.sleep(0.01)
        return None
    finally:
        connections.close_all()  # a pool thread: PostgreSQL must drop the test db


def lock_waiter_pid():
    """The backend of a writer thread waiting on a lock."""
    return activity_pid("wait_event_type = 'Lock' AND datname = current_database()")


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


def terminate_backend(pid):
    """Kill backend `pid`, and wait until PostgreSQL has seen it go."""
    with connection.cursor() as cursor:
        cursor.execute("SELECT pg_terminate_backend(%s)", [pid])
        deadline = time.monotonic() + 10
        while time.monotonic() < deadline:
            cursor.execute("SELECT 1 FROM pg_stat_activity WHERE pid = %s", [pid])
            if cursor.fetchone() is None:
                break
            time.sleep(0.01)
    connections.close_all()


@postgresql_only
async def test_a_room_writer_whose_connection_was_killed_reconnects(alice, lobby):
    writer = runtime().room_writer(lobby.id)
    (pid,) = await writer.fetchone("SELECT pg_backend_pid()", [])
    await asyncio.to_thread(terminate_backend, pid)
    try:
        sent = await send_on_loop(alice, lobby, "maybe")
    except DatabaseError:
        stored = 0  # it found the connection dead: not stored, so never acked
    else:
        stored = sent.message["seq"]  # the writer had seen it die: it reconnected
    again = await send_on_loop(alice, lobby, "again")
    assert again.message["seq"] == stored + 1
    assert (await writer.fetchone("SELECT pg_backend_pid()", []))[0] != pid


def backends_gone(pids):
    """True once pg_stat_activity lists none of `pids` (False after 10 s)."""
    # This backend's own row, as soon as none of theirs is left.
    alone = (
        "pid = pg_backend_pid() AND NOT EXISTS "
        "(SELECT 1 FROM pg_stat_activity other WHERE other.pid = ANY(%s))"
    )
    return activity_pid(alone, [pids]) is not None


def running_pid(query):
    """The backend running `query`."""
    return activity_pid("query = %s AND state = 'active'", [query])


@postgresql_only
async def test_statements_queued_behind_one_whose_connection_dies_run_on_a_new_one():
    writer = runtime().room_writer(1)
    (pid,) = await writer.fetchone("SELECT pg_backend_pid()", [])
    sleeping = "SELECT pg_sleep(30) AS dying"
    dying = asyncio.ensure_future(writer.fetchone(sleeping, []))
    queued = [asyncio.ensure_future(writer.batched(tenth, x)) for x in (1, 2)]
    after = asyncio.ensure_future(writer.fetchone("SELECT pg_backend_pid()", []))
    assert await asyncio.to_thread(running_pid, sleeping) == pid
    await asyncio.to_thread(terminate_backend, pid)
    with pytest.raises(DatabaseError):
        await dying  # in flight: it may or may not have run, so it fails
    assert await asyncio.gather(*queued) == [(10,), (5,)]  # never sent: they run
    assert (await after)[0] != pid


@postgresql_only
async def test_a_cancelled_caller_leaves_the_connection_working_for_the_others():
    writer = runtime().room_writer(1)
    (pid,) = await writer.fetchone("SELECT pg_backend_pid()", [])
    runs = []

    def counted(items):
        runs.append(list(items))
        return tenth(items)

    sleeping = "SELECT pg_sleep(30) AS cancelled"
    sent = asyncio.ensure_future(writer.fetchone(sleeping, []))
    queued = [asyncio.ensure_future(writer.batched(counted, x)) for x in (1, 2, 5)]
    after = asyncio.ensure_future(writer.fetchone("SELECT pg_backend_pid()", []))
    assert await asyncio.to_thread(running_pid, sleeping) == pid
    sent.cancel()
    queued[1].cancel()

    def cancel_the_sleep():  # the statement sent still holds the connection
        with connection.cursor() as cursor:
            cursor.execute("SELECT pg_cancel_backend(%s)", [pid])
        connections.close_all()

    await asyncio.to_thread(cancel_the_sleep)
    assert await queued[0] == (10,) and await queued[2] == (2,)
    assert runs == [[1, 5]]  # the cancelled caller's item was left out
    assert await after == (pid,)  # the same connection, its replies in step


@postgresql_only
async def test_a_failing_statement_fails_only_its_own_callers():
    writer = runtime().room_writer(1)
    await writer.fetchone("SELECT 1", [])  # connected: the first call goes at once
    outcomes = await asyncio.gather(
        writer.fetchone("SELECT 1 / 0", []),
        writer.batched(tenth, 5),
        writer.fetchall("SELECT %s + 1", [1]),
        writer.fetchone("INSERT INTO chat_room (id) SELECT 1 WHERE false", []),
        writer.fetchone("SELECT %s", [1, 2]),
        writer.fetchall("SELECT generate_series(1, %s)", [3]),
        return_exceptions=True,
    )
    assert isinstance(outcomes[0], DatabaseError)
    assert outcomes[0].__cause__.sqlstate == "22012"  # division_by_zero
    assert outcomes[1:3] == [(2,), [(2,)]]
    assert isinstance(outcomes[3], DatabaseError)  # no rows to fetch
    assert isinstance(outcomes[4], DatabaseError)  # two parameters for one
    assert outcomes[5] == [(1,), (2,), (3,)]


def tenth(items):
    """A test statement: (index, 10 / item) for each item; no row for 10."""
    return (
        "SELECT i, 10 / x FROM unnest(%s::int[], %s::int[]) AS t(i, x) WHERE x <> 10",
        [list(range(len(items))), items],
    )


@postgresql_only
async def test_calls_queued_while_a_writer_is_busy_run_as_one_statement(monkeypatch):
    writer = runtime().room_writer(1)
    await writer.fetchone("SELECT 1", [])  # connected
    runs = []
    monkeypatch.setattr(db, "BATCH_MAX", 3)

    def counted(items):
        runs.append(list(items))
        return tenth(items)

    batches = REGISTRY.get_sample_value("voiceflow_db_batch_size_count") or 0

    results = await asyncio.gather(
        *[writer.batched(counted, x) for x in (1, 2, 10, 5, 1)]
    )
    assert results == [(10,), (5,), None, (2,), (10,)]  # 10 has no row
    # The first at once (the writer was idle), then the rest in submission order,
    # BATCH_MAX at a time.
    assert runs == [[1], [2, 10, 5], [1]]
    assert REGISTRY.get_sample_value("voiceflow_db_batch_size_count") == batches + 3


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
@pytest.mark.parametrize("prepared", [True, False])
async def test_a_statement_run_again_and_again_is_prepared_once_unless_turned_off(
    settings, prepared
):
    settings.DB_PREPARED = prepared  # VOICEFLOW_DB_PREPARED=0: PgBouncer before 1.21
    reader = runtime().socket_connection()
    values = [*range(8), 2**40]  # the last one a bigint, the others smallints
    assert [await reader.fetchone("SELECT %s + 1", [n]) for n in values] == [
        (n + 1,) for n in values
    ]
    rows = await reader.fetchall("SELECT statement FROM pg_prepared_statements", [])
    # Prepared once run `prepare_threshold` times, as psycopg does: the bigint's not.
    assert rows == ([("SELECT $1 + 1",)] if prepared else [])
    if prepared:  # a prepared statement's errors come out the same
        insert = "INSERT INTO chat_room (slug) VALUES (%s) RETURNING id"
        for _ in range(7):
            with pytest.raises(IntegrityError):  # slug is NOT NULL
                await reader.fetchone(insert, [None])
        rows = await reader.fetchall("SELECT statement FROM pg_prepared_statements", [])
        assert ("INSERT INTO chat_room (slug) VALUES ($1) RETURNING id",) in rows
        for _ in range(7):  # from the sixth on, its preparing fails
            with pytest.raises(DatabaseError):
                await reader.fetchone("SELECT * FROM no_such_table WHERE id = %s", [1])
        assert await reader.fetchone("SELECT %s + 1", [1]) == (2,)


@postgresql_only
async def test_a_statement_larger_than_the_sockets_buffer_goes_out_whole():
    reader = runtime().socket_connection()
    big = "x" * 20_000_000  # more than the kernel takes at once: the rest on writable
    assert await reader.fetchone("SELECT length(%s)", [big]) == (len(big),)
    assert await reader.fetchone("SELECT 1", []) == (1,)


@postgresql_only
async def test_calls_fail_while_the_database_is_unreachable_and_work_again_after(
    monkeypatch,
):
    writer = runtime().room_writer(1)
    params = db._loop_connection_params
    monkeypatch.setattr(
        db,
        "_loop_connection_params",
        lambda: {**params(), "port": 1},  # refused
    )
    outcomes = await asyncio.gather(
        writer.fetchone("SELECT 1", []),
        writer.batched(tenth, 5),
        return_exceptions=True,
    )
    assert all(isinstance(outcome, DatabaseError) for outcome in outcomes), outcomes
    monkeypatch.setattr(db, "_loop_connection_params", params)
    assert await writer.batched(tenth, 5) == (2,)


@postgresql_only
def test_a_closed_loops_connections_close_once_its_runtime_is_left():
    # async_to_sync runs each call on a loop of its own: the connections of a
    # closed loop's runtime must not wait for the garbage collector (nor keep
    # PostgreSQL from dropping the test database), even while something still
    # holds them.
    async def opened():
        conns = [runtime().room_writer(1), runtime().socket_connection()]
        pids = [(await c.fetchone("SELECT pg_backend_pid()", []))[0] for c in conns]
        return conns, pids

    async def another_call():
        runtime()

    gc.disable()  # the collector would close them too, in its own time
    try:
        held, pids = async_to_sync(opened)()
        async_to_sync(another_call)()  # a new loop's runtime: the closed ones go
        assert backends_gone(pids)
        held, pids = async_to_sync(opened)()
        runtimes_abandon_closed()  # as the suite does before dropping the database
        assert backends_gone(pids)
        assert all(conn.pgconn is None for conn in held)
    finally:
        gc.enable()


@postgresql_only
async def test_close_fails_the_statements_in_flight_and_queued_then_reconnects():
    writer = runtime().room_writer(1)
    (pid,) = await writer.fetchone("SELECT pg_backend_pid()", [])
    sleeping = "SELECT pg_sleep(30) AS closed"
    calls = [
        asyncio.ensure_future(writer.fetchone(sleeping, [])),
        asyncio.ensure_future(writer.batched(tenth, 5)),
    ]
    assert await asyncio.to_thread(running_pid, sleeping) == pid
    await writer.close()
    outcomes = await asyncio.gather(*calls, return_exceptions=True)
    assert all(isinstance(outcome, DatabaseError) for outcome in outcomes), outcomes
    assert (await writer.fetchone("SELECT pg_backend_pid()", []))[0] != pid
    # The old backend sleeps on until it next writes to the socket (as with psycopg's
    # own close): the test database cannot be dropped while it does.
    await asyncio.to_thread(terminate_backend, pid)

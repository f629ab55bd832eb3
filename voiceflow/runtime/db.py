"""Database access of the socket path: room writers on the loop, socket-read threads.

channels' database_sync_to_async runs close_old_connections() before and after every
call; with health checks on, the next query then pays a `SELECT 1` round trip first,
i.e. one extra round trip per stored message (and with the pool, a check-out, its
health check and a check-in per call). These threads keep their connections and do
that upkeep (health check, CONN_MAX_AGE) at most once per CHECK_INTERVAL per thread,
and at once after a call that hit a database error, so a broken connection is still
dropped before the next call.

On PostgreSQL the socket path's message inserts and simple reads (one autocommitted
statement each: chat.store.postgres) skip threads altogether: LoopConnection runs them
on connections of the event loop, which its Runtime holds
(`runtime().room_writer(room_id)`, `runtime().socket_connection()`). It drives libpq
through psycopg's low-level API (a reader callback per connection, no task or cursor
per statement) and batches the posts that queue behind a busy connection (group
commit).
"""

import asyncio
import functools
import itertools
import threading
import time
from collections import deque
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import psycopg
from asgiref.sync import SyncToAsync
from django.conf import settings
from django.db import DatabaseError, IntegrityError, close_old_connections, connections
from psycopg import adapt, pq
from psycopg import errors as e
from psycopg._queries import PostgresQuery
from psycopg.abc import Transformer

from voiceflow import metrics

CHECK_INTERVAL = 1.0  # seconds

_checked = threading.local()


def _errors_occurred():
    return any(conn.errors_occurred for conn in connections.all(initialized_only=True))


class HotPathDatabaseSyncToAsync(SyncToAsync):
    def thread_handler(self, loop, *args, **kwargs):
        now = time.monotonic()
        if now - getattr(_checked, "at", float("-inf")) >= CHECK_INTERVAL:
            close_old_connections()
            _checked.at = now
        try:
            return super().thread_handler(loop, *args, **kwargs)
        finally:
            if _errors_occurred():
                close_old_connections()
                _checked.at = float("-inf")


# Django's one thread-sensitive worker would serialize every room's inserts and every
# socket's reads; these threads run them in parallel, each keeping its connection.
_room_executors: list[ThreadPoolExecutor] = []
_socket_executors: list[ThreadPoolExecutor] = []
_executors_lock = threading.Lock()
_socket_turn = itertools.count()


def _executors(pool, prefix):
    """`pool`, filled on first use with DB_THREADS single-thread executors."""
    if not pool:
        with _executors_lock:
            if not pool:  # another thread may have filled it meanwhile
                pool.extend(
                    ThreadPoolExecutor(1, thread_name_prefix=f"{prefix}-{n}")
                    for n in range(settings.DB_THREADS)
                )
    return pool


def _room_executor(room_id):
    executors = _executors(_room_executors, "db-room")
    return executors[room_id % len(executors)]


def room_database_sync_to_async(room_id):
    """HotPathDatabaseSyncToAsync on the room's own thread: FIFO per room."""
    return functools.partial(
        HotPathDatabaseSyncToAsync,
        thread_sensitive=False,
        executor=_room_executor(room_id),
    )


def socket_database_sync_to_async(func):
    """HotPathDatabaseSyncToAsync on the socket-read threads, in turn.

    On asgiref's one worker, 64 concurrent connects queued for up to a second each
    while the process was half idle. Each thread keeps its connection: returned to
    the pool after every call, the next call paid the pool's health check first.
    """

    @functools.wraps(func)
    async def call(*args, **kwargs):
        executors = _executors(_socket_executors, "db-socket")
        executor = executors[next(_socket_turn) % len(executors)]
        run = HotPathDatabaseSyncToAsync(
            func, thread_sensitive=False, executor=executor
        )
        return await run(*args, **kwargs)

    return call


def close_connections():
    """Close the DB threads' connections (tests drop their database afterwards)."""
    for executor in [*_room_executors, *_socket_executors]:
        executor.submit(connections.close_all).result()


# The socket path's statements on the event loop: message inserts (autocommitted, one
# statement each) on DB_THREADS writer connections per loop, a room always on the same
# one and in turn; the sockets' reads and joins on as many socket connections.

Statement = Callable[[list[Any]], tuple[str, Sequence[Any]]]

# The kinds of a fetchone's and a fetchall's _Call (a batch's is its builder).
_ONE = object()
_ALL = object()

_OK = pq.ConnStatus.OK
_TUPLES_OK = pq.ExecStatus.TUPLES_OK
_FATAL_ERROR = pq.ExecStatus.FATAL_ERROR

# Items per group commit: a batch's statement and its reply stay a few hundred KB.
BATCH_MAX = 256
# Statement texts kept converted per connection, and statements prepared per
# connection (psycopg's own limit): beyond, a text runs converted afresh, unprepared.
STATEMENTS_MAX = 100


class _Call:
    """A statement to run: `kind` is a statement builder with its batch's items, or
    _ONE / _ALL with the statement itself."""

    __slots__ = ("kind", "items", "futures", "sql", "params")

    def __init__(self, kind, items, futures, sql=None, params=None):
        self.kind = kind
        self.items = items
        self.futures = futures
        self.sql = sql
        self.params = params


class _Text:
    """A statement text converted for PostgreSQL ($n placeholders) once per
    connection; its runs and prepared names by parameter types (as psycopg keys
    them: an int's type depends on its size)."""

    __slots__ = ("query", "runs", "names")

    def __init__(self, query: PostgresQuery) -> None:
        self.query = query
        self.runs: dict[tuple[int, ...], int] = {}
        self.names: dict[tuple[int, ...], bytes] = {}


class LoopConnection:
    """A PostgreSQL connection (autocommit) of the event loop: its statements run
    one at a time, in call order.

    It drives libpq itself (psycopg's nonblocking PGconn), with no task, lock or
    cursor per statement: a statement leaves from its caller when the connection is
    idle, else from the reader callback (registered once per connection) that reads
    the reply of the one before and settles its callers' futures. psycopg opens the
    connection and adapts parameters and rows (its Transformer, with Django's
    adapters). Statements are prepared once one has run `prepare_threshold` times on
    the connection (psycopg's rule; VOICEFLOW_DB_PREPARED=0 turns it off): one
    round trip more, paid by repeated statements only.

    psycopg errors come out as Django's IntegrityError or DatabaseError. A lost
    connection fails the statement in flight; the next one reconnects. A cancelled
    caller's statement, once sent, still runs to its end (the replies stay in step);
    not sent yet, it is left out. `tasks` keeps its connect tasks alive (the loop
    keeps only a weak reference to a task): the Runtime's, shared by its connections.
    """

    def __init__(self, tasks: set[asyncio.Task]) -> None:
        self.tasks = tasks
        self.conn: psycopg.AsyncConnection | None = None
        self.pgconn: pq.abc.PGconn | None = None  # conn's, None if not connected
        self.connecting: asyncio.Task | None = None
        self.current: _Call | None = None  # sent, its reply not read yet
        self.results: list[pq.abc.PGresult] = []  # current's, read so far
        self.queue: deque[_Call] = deque()  # waiting to be sent, in call order
        self.open_batches: dict[Statement, _Call] = {}  # queued, still taking items
        # Per connection:
        self.texts: dict[str, _Text] = {}
        self.prepared = 0
        self.preparing: tuple[_Text, tuple[int, ...], bytes] | None = None
        self.writing = False  # a statement waits for the socket to take the rest
        # Set on connecting:
        self.loop: asyncio.AbstractEventLoop
        self.fd: int
        self.tx: Transformer
        self.threshold: int | None

    async def fetchone(self, sql: str, params: Sequence[Any]) -> tuple[Any, ...] | None:
        """Run one statement; its first row. psycopg errors come out as Django's."""
        future = asyncio.get_running_loop().create_future()
        self._call(_Call(_ONE, None, [future], sql, params))
        return await future

    async def fetchall(self, sql: str, params: Sequence[Any]) -> list[tuple[Any, ...]]:
        """Run one statement; all its rows. psycopg errors come out as Django's."""
        future = asyncio.get_running_loop().create_future()
        self._call(_Call(_ALL, None, [future], sql, params))
        return await future

    async def batched(self, statement: Statement, item: Any) -> tuple[Any, ...] | None:
        """`item`'s row of `statement`, run for every item queued meanwhile at once.

        Group commit: while this connection is busy, items wait; then one statement
        (one round trip, one commit) runs for all of them (BATCH_MAX at most), in
        submission order. `statement(items)` returns (sql, params) for rows whose
        first column is the item's index; an item with no row gets None. If the
        batch fails on a constraint, each item runs alone, so only the offending one
        sees the error.
        """
        future = asyncio.get_running_loop().create_future()
        if self._ready():
            self._send(_Call(statement, [item], [future]))
        else:
            batch = self.open_batches.get(statement)
            if batch is not None and len(batch.items) < BATCH_MAX:
                batch.items.append(item)
                batch.futures.append(future)
            else:
                batch = self.open_batches[statement] = _Call(
                    statement, [item], [future]
                )
                self._queue(batch)
        return await future

    async def close(self) -> None:
        """Close the connection; statements in flight or waiting fail. The next
        statement reconnects."""
        if self.connecting is not None:
            self.connecting.cancel()
        calls = list(self.queue)
        if self.current is not None:
            calls.insert(0, self.current)
        self.abandon()
        error = DatabaseError("the connection is closed")
        for call in calls:
            _settle_all(call.futures, error)

    def abandon(self) -> None:
        """Close the connection, leaving its callers unsettled (as `close` must not
        on a loop that is closed: their futures went with it)."""
        self.connecting = None
        self.current = None
        self.queue.clear()
        self.open_batches.clear()
        self._drop()

    def _ready(self) -> bool:
        """Connected, nothing in flight or waiting: a statement may leave at once."""
        return self.current is None and not self.queue and self.pgconn is not None

    def _call(self, call: _Call) -> None:
        if self._ready():
            self._send(call)
        else:
            self._queue(call)

    def _queue(self, call: _Call) -> None:
        self.queue.append(call)
        if self.pgconn is None:
            self._connect_soon()

    def _connect_soon(self) -> None:
        if self.connecting is None:
            task = self.connecting = asyncio.ensure_future(self._connect())
            self.tasks.add(task)
            task.add_done_callback(self.tasks.discard)

    def _next(self) -> None:
        """Send the first statement queued whose callers still wait, if the
        connection is free (connecting first if need be)."""
        queue = self.queue
        while queue and self.current is None:
            if self.pgconn is None:
                self._connect_soon()
                return
            call = queue.popleft()
            if self.open_batches.get(call.kind) is call:
                del self.open_batches[call.kind]
            futures = call.futures
            if any(future.done() for future in futures):  # cancelled callers
                if call.items is not None:
                    kept = [n for n, future in enumerate(futures) if not future.done()]
                    call.items = [call.items[n] for n in kept]
                    call.futures = [futures[n] for n in kept]
                if not call.futures:
                    continue
            self._send(call)

    def _send(self, call: _Call) -> None:
        """Send `call` on the free, open connection (its callers fail at once if it
        cannot be sent)."""
        pgconn = self.pgconn
        assert pgconn is not None
        try:
            kind = call.kind
            if kind is _ONE or kind is _ALL:
                sql, params = call.sql, call.params
            else:
                sql, params = kind(call.items)
                metrics.DB_BATCH_SIZE.observe(len(call.items))
            text = self.texts.get(sql)
            if text is not None:
                query = text.query
                query.dump(params)
            else:
                query = PostgresQuery(self.tx)
                query.convert(sql, params)
                if len(self.texts) < STATEMENTS_MAX:
                    text = self.texts[sql] = _Text(query)
        except Exception as error:  # unadaptable parameters, a builder's bug
            _settle_all(call.futures, error)
            return
        self.current = call
        try:
            types = query.types
            if text is None:
                pgconn.send_query_params(
                    query.query, query.params, query.types, query.formats
                )
            elif (name := text.names.get(types)) is not None:
                pgconn.send_query_prepared(name, query.params, query.formats)
            else:
                runs = text.runs.get(types, 0)
                threshold = self.threshold
                if (
                    threshold is None
                    or runs < threshold
                    or self.prepared >= STATEMENTS_MAX
                ):
                    text.runs[types] = runs + 1
                    pgconn.send_query_params(
                        query.query, query.params, types, query.formats
                    )
                else:  # the statement runs once prepared (_on_readable)
                    name = b"_vf_%d" % self.prepared
                    self.preparing = (text, types, name)
                    pgconn.send_prepare(name, query.query, types)
            self._flush()
        except psycopg.Error as error:
            self._lost(error)

    def _flush(self) -> None:
        pgconn = self.pgconn
        assert pgconn is not None
        if pgconn.flush():  # the socket's buffer is full: the rest when it drains
            self.writing = True
            self.loop.add_writer(self.fd, self._on_writable)

    def _on_writable(self) -> None:
        try:
            assert self.pgconn is not None
            if not self.pgconn.flush():
                self.writing = False
                self.loop.remove_writer(self.fd)
        except psycopg.Error as error:
            self._lost(error)
            self._next()

    def _on_readable(self) -> None:
        """Read what the server sent; when the statement in flight is done, settle
        its callers and send the next."""
        pgconn = self.pgconn
        assert pgconn is not None
        try:
            pgconn.consume_input()  # raises if the server closed the connection
            call = self.current
            if call is None:
                return  # a notice, left for libpq to parse with the next reply
            results = self.results
            while not pgconn.is_busy():
                result = pgconn.get_result()
                if result is None:
                    break
                results.append(result)
            else:
                return  # the rest of the reply is still to come
            self.results = []
            if self.preparing is not None and self._prepared(results):
                return  # the statement itself is on its way
            self.current = None
            self._done(call, results)
        except Exception as error:  # psycopg's if the connection was lost
            self._lost(error)
            self._next()

    def _prepared(self, results: list[pq.abc.PGresult]) -> bool:
        """Prepared: send the statement itself (True). Else its callers get the
        error (False)."""
        assert self.preparing is not None and self.pgconn is not None
        text, types, name = self.preparing
        self.preparing = None
        if any(result.status == _FATAL_ERROR for result in results):
            return False
        del text.runs[types]
        text.names[types] = name
        self.prepared += 1
        query = text.query
        self.pgconn.send_query_prepared(name, query.params, query.formats)
        self._flush()
        return True

    def _done(self, call: _Call, results: list[pq.abc.PGresult]) -> None:
        """Settle `call` with its reply, after sending the next statement (the server
        runs it meanwhile)."""
        error: Exception | None = None
        outcome: Any = None
        if len(results) == 1 and (result := results[0]).status == _TUPLES_OK:
            try:
                tx = self.tx
                tx.set_pgresult(result)
                if call.kind is _ONE:
                    outcome = tx.load_row(0, tuple) if result.ntuples else None
                elif call.kind is _ALL:
                    outcome = tx.load_rows(0, result.ntuples, tuple)
                else:
                    found = {
                        row[0]: row[1:]
                        for row in tx.load_rows(0, result.ntuples, tuple)
                    }
                    outcome = [found.get(index) for index in range(len(call.items))]
            except psycopg.Error as failed:
                error = _django_error(failed)
            except Exception as failed:  # a statement whose rows are not as said
                error = failed
        else:
            error = self._error(results)
        if (
            isinstance(error, IntegrityError)
            and call.items is not None
            and len(call.items) > 1
        ):
            # Find the offending item(s) first; the rest still commit.
            alone = [
                _Call(call.kind, [item], [future])
                for item, future in zip(call.items, call.futures, strict=True)
            ]
            self.queue.extendleft(reversed(alone))
            self._next()
            return
        assert self.pgconn is not None
        if self.pgconn.status != _OK:
            self._drop()
        self._next()
        if error is not None:
            _settle_all(call.futures, error)
        elif call.items is None:
            future = call.futures[0]
            if not future.done():
                future.set_result(outcome)
        else:
            for future, row in zip(call.futures, outcome, strict=True):
                if not future.done():
                    future.set_result(row)

    def _error(self, results: list[pq.abc.PGresult]) -> Exception:
        """The error a reply that has no rows stands for, as psycopg raises it."""
        for result in results:
            if result.status == _FATAL_ERROR:
                return _django_error(e.error_from_result(result, self.tx.encoding))
        if not results:
            return _django_error(e.InternalError("got no result from the query"))
        status = (results[-1].command_status or b"").decode()
        return _django_error(
            e.ProgrammingError(
                f"the last operation didn't produce records (command status: {status})"
            )
        )

    def _lost(self, error: Exception) -> None:
        """The connection broke (or a bug struck): fail the statement in flight and
        drop the connection; the next statement reconnects."""
        call, results = self.current, self.results
        self.current = None
        self._drop()
        if call is not None:
            if any(result.status == _FATAL_ERROR for result in results):
                failed = self._error(results)  # the server's reason, if it said one
            elif isinstance(error, psycopg.Error):
                failed = _django_error(error)
            else:
                failed = DatabaseError(f"the connection failed: {error!r}")
                failed.__cause__ = error
            _settle_all(call.futures, failed)

    async def _connect(self) -> None:
        try:
            conn = await psycopg.AsyncConnection.connect(
                **_loop_connection_params(), autocommit=True
            )
        except BaseException as error:
            if self.connecting is asyncio.current_task():  # not close()'s doing
                self.connecting = None
                calls = list(self.queue)
                self.queue.clear()
                self.open_batches.clear()
                for call in calls:
                    _settle_all(call.futures, error)
            if not isinstance(error, Exception):
                raise
            return
        if self.connecting is not asyncio.current_task():  # closed meanwhile
            await conn.close()
            return
        self.connecting = None
        self.conn, pgconn = conn, conn.pgconn
        self.tx = adapt.Transformer(conn)
        self.threshold = conn.prepare_threshold
        self.loop = asyncio.get_running_loop()
        self.fd = pgconn.socket
        self.loop.add_reader(self.fd, self._on_readable)
        self.pgconn = pgconn
        self._next()

    def _drop(self) -> None:
        """Close the connection (unregistered first: its descriptor is reused)."""
        conn, self.conn, self.pgconn = self.conn, None, None
        self.results, self.preparing = [], None
        if conn is None:
            return
        self.loop.remove_reader(self.fd)
        if self.writing:
            self.writing = False
            self.loop.remove_writer(self.fd)
        self.texts.clear()
        self.prepared = 0
        conn.pgconn.finish()


def _django_error(error: psycopg.Error) -> DatabaseError:
    django = (
        IntegrityError if isinstance(error, psycopg.IntegrityError) else DatabaseError
    )
    wrapped = django(*error.args)
    wrapped.__cause__ = error
    return wrapped


def _settle_all(futures: list[asyncio.Future], error: BaseException) -> None:
    """Fail the futures not done (a cancelled caller's is): psycopg errors as
    Django's, a cancellation as one."""
    if isinstance(error, psycopg.Error):
        error = _django_error(error)
    for future in futures:
        if not future.done():
            if isinstance(error, asyncio.CancelledError):
                future.cancel()
            else:
                future.set_exception(error)


def _loop_connection_params():
    # Django's own connection parameters (host, credentials, OPTIONS, adapters); the
    # cursor class it names is a sync one.
    params = connections.create_connection("default").get_connection_params()
    params.pop("cursor_factory", None)
    params["prepare_threshold"] = 5 if settings.DB_PREPARED else None  # psycopg's 5
    # A database that does not answer must not hold a room's writer (and the rooms
    # sharing it) for the kernel's TCP timeout.
    params.setdefault("connect_timeout", 10)
    return params

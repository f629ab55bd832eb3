"""Fixtures shared by every app's tests."""

import os
import shutil
import uuid

import pytest
from asgiref.sync import SyncToAsync
from channels.layers import channel_layers
from django.core.cache import cache
from django.db import connections

# `make test` runs the suite twice: the embedded pass (SQLite, in-memory layer) and the
# shared pass (PostgreSQL, Redis). A test whose meaning does not depend on the mode
# (it drives the page, or starts its own private services) is marked
# one_pass("embedded") or one_pass("shared"): the other pass deselects it.
PASSES = ("embedded", "shared")


def this_pass():
    from django.conf import settings

    return "embedded" if settings.EMBEDDED else "shared"


def other_pass():
    return PASSES[1 - PASSES.index(this_pass())]


def pytest_configure(config):
    """The fast password hasher."""
    from django.conf import settings

    # As VOICEFLOW_FAST_PASSWORD_HASHER=1 gives the server processes the tests start:
    # PBKDF2 takes about a second per user made on a loaded machine, and no test is
    # about the hasher.
    settings.PASSWORD_HASHERS = ["django.contrib.auth.hashers.MD5PasswordHasher"]


def pytest_collection_modifyitems(config, items):
    """Deselect the tests marked one_pass for the other pass."""
    current, kept, other = this_pass(), [], []
    for item in items:
        marker = item.get_closest_marker("one_pass")
        if marker is None:
            kept.append(item)
            continue
        if marker.args not in ((name,) for name in PASSES):
            raise pytest.UsageError(f"{item.nodeid}: one_pass takes one of {PASSES}")
        (kept if marker.args[0] == current else other).append(item)
    if other:
        config.hook.pytest_deselected(items=other)
        items[:] = kept
    _one_pass_deselected.update(item.nodeid for item in other)


# Node ids deselected by one_pass.
_one_pass_deselected = set()


def pytest_report_header(config):
    return f"{this_pass()} pass: tests marked one_pass({other_pass()!r}) are deselected"


def pytest_terminal_summary(terminalreporter, config):
    if _one_pass_deselected:
        files = sorted({nodeid.split("::")[0] for nodeid in _one_pass_deselected})
        terminalreporter.write_line(
            f"deselected, run in the {other_pass()} pass (one_pass): "
            f"{len(_one_pass_deselected)} from {', '.join(files)}"
        )


@pytest.fixture(scope="session", autouse=True)
def _close_async_db_connections(django_db_setup):
    """Close the persistent connection of the thread behind database_sync_to_async.

    Otherwise PostgreSQL refuses to drop the test database at the end of the run.
    The /health check's own thread, the per-room writer threads and the event loops'
    runtimes hold some too.
    """
    from voiceflow import health
    from voiceflow.runtime import db, runtimes_abandon_closed

    yield
    SyncToAsync.single_thread_executor.submit(connections.close_all).result()
    health.close_database_connection()
    db.close_connections()
    runtimes_abandon_closed()  # the event loops' connections of finished tests


@pytest.fixture(autouse=True)
def _fresh_layer_and_cache():
    """Each test gets its own channel layer (bound to its loop) and an empty cache."""
    channel_layers.backends.clear()
    cache.clear()
    yield
    channel_layers.backends.clear()
    cache.clear()


@pytest.fixture(autouse=True)
def _fresh_rate_limits(settings):
    """Each test starts with empty rate-limit windows: own Redis keys, a clear twin."""
    from chat.ratelimit import memory_limiter
    from chat.tickets import memory_tickets
    from voiceflow.breaker import redis_breaker

    settings.REDIS_KEY_PREFIX = f"{settings.REDIS_KEY_PREFIX}:{uuid.uuid4().hex[:8]}"
    memory_limiter.clear()
    memory_tickets.clear()
    redis_breaker.reset()  # a Redis a test killed is not the next test's
    yield
    memory_limiter.clear()
    redis_breaker.reset()


@pytest.fixture(autouse=True)
async def _close_loop_clients():
    """The runtime (Redis clients, database connections, Hub) is the test's loop's."""
    yield
    from voiceflow.runtime import runtime_close

    await runtime_close()


class HandClock:
    """A clock moved by hand: `clock.now += 1`."""

    def __init__(self):
        self.now = 1000.0

    def __call__(self):
        return self.now


@pytest.fixture
def hand_clock():
    return HandClock()


@pytest.fixture
def breaker_clock(hand_clock, monkeypatch):
    """The Redis circuit breaker on a clock moved by hand."""
    from voiceflow.breaker import redis_breaker

    monkeypatch.setattr(redis_breaker, "clock", hand_clock)
    return hand_clock


@pytest.fixture
def set_rate(settings):
    """Override one named rate limit for this test: set_rate("message", 3, window=1)."""

    def set_rate(name, limit, window=60):
        conf = settings.VOICEFLOW
        limits = {**conf["RATE_LIMITS"], name: {"limit": limit, "window": window}}
        settings.VOICEFLOW = {**conf, "RATE_LIMITS": limits}

    return set_rate


@pytest.fixture
def test_redis_url(settings):
    """A real Redis for tests that need one in both passes (TEST_REDIS_URL)."""
    url = settings.REDIS_URL or os.environ.get("TEST_REDIS_URL")
    if not url:
        pytest.fail("These tests need Redis: set TEST_REDIS_URL (make test does).")
    return url


@pytest.fixture
def redis_server():
    """A private redis-server on a free port that the test may kill."""
    from voiceflow.tests.servers import RedisServer

    if not shutil.which("redis-server"):
        pytest.fail("redis-server is not on PATH; fault tests need it.")
    server = RedisServer().start()
    yield server
    server.kill()


@pytest.fixture
def make_user(db, django_user_model):
    def make(username="alice", password="Correct-Horse-9"):
        return django_user_model.objects.create_user(
            username=username, password=password
        )

    return make


@pytest.fixture
def alice(make_user):
    return make_user("alice")


@pytest.fixture
def bob(make_user):
    return make_user("bob")


@pytest.fixture
def lobby(db):
    from chat.models import Room

    # Transactional tests flush the migration's lobby; make sure it is there.
    return Room.objects.get_or_create(slug="lobby", defaults={"name": "Lobby"})[0]


@pytest.fixture(autouse=True)
def _fresh_presence(settings):
    """Each test starts with no presence: an empty memory store, or own Redis keys."""
    from presence.services import SocketTyping, presence_events_reset
    from presence.store import memory_store_reset

    memory_store_reset()
    presence_events_reset()
    SocketTyping._forwarded.clear()
    if not settings.REDIS_URL:
        yield
        return
    import uuid

    import redis

    url = settings.REDIS_URL
    prefix = f"{settings.REDIS_KEY_PREFIX}:t{uuid.uuid4().hex[:8]}"
    settings.REDIS_KEY_PREFIX = prefix
    yield
    client = redis.Redis.from_url(url)
    keys = list(client.scan_iter(match=f"{prefix}:*", count=500))
    if keys:
        client.delete(*keys)
    client.close()


@pytest.fixture
def presence_conf(settings):
    """Shrunk presence timings (seconds) for tests; returns the live VOICEFLOW dict."""

    def shrink(**values):
        settings.VOICEFLOW = {**settings.VOICEFLOW, **values}
        return settings.VOICEFLOW

    return shrink


@pytest.hookimpl(hookwrapper=True)
def pytest_runtest_makereport(item, call):
    """A failing test's report carries the logs of the server processes it started."""
    from voiceflow.tests import servers

    outcome = yield
    report = outcome.get_result()
    if report.failed:
        for server in servers.started:
            tail = server.output()[-6000:]
            report.sections.append((f"server log :{server.port}", tail))
    if report.when == "teardown":
        servers.started.clear()

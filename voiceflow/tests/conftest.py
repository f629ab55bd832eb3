import shutil

import pytest

from . import servers
from .servers import ServerProcess


@pytest.fixture
def server(transactional_db, settings):
    """A real server process (the Procfile's web line) on this run's database."""
    # This test's Redis key prefix, so rate-limit windows start empty.
    process = ServerProcess(REDIS_KEY_PREFIX=settings.REDIS_KEY_PREFIX).start()
    yield process
    process.stop()


@pytest.fixture
def cluster(settings):
    """deploy/cluster.py's deployment on private ports (HAProxy, three web processes,
    PgBouncer, Redis with a replica and Sentinels; voiceflow/tests/deployment.py),
    stopped after the test."""
    from .deployment import Cluster

    for tool in ("haproxy", "redis-server", "pgbouncer"):
        if not shutil.which(tool):
            pytest.fail(f"{tool} is not on PATH (.ci/run installs Debian's package).")
    deployment = Cluster(settings)
    servers.started.append(deployment)
    yield deployment.start()
    deployment.stop()


@pytest.fixture
def browser_server(transactional_db, lobby):
    """A server for browser tests, limits raised so their traffic is never refused."""
    process = ServerProcess(VOICEFLOW_RATE_LIMIT_MULTIPLIER="100").start()
    yield process
    process.stop()


@pytest.fixture
def chromium(browser_server):
    """Playwright driving Debian's Chromium.

    Function-scoped, and set up after the database and server: the sync API keeps an
    event loop running on the main thread, so it must be gone before the database
    flush at teardown (Django refuses synchronous queries under a running loop).
    """
    from playwright.sync_api import sync_playwright

    from .browsers import launch

    with sync_playwright() as playwright:
        browser = launch(playwright)
        yield browser
        browser.close()


@pytest.fixture
def people(chromium, browser_server):
    """people("alice", viewport=PHONE) → a logged-in Person; page errors fail it."""
    from .browsers import Person

    made = []

    def make(name, viewport=None, log_in=True):
        kwargs = {"viewport": viewport} if viewport else {}
        person = Person(chromium, browser_server, name, **kwargs)
        made.append(person)
        return person.log_in() if log_in else person

    yield make
    errors = {person.name: person.errors for person in made if person.errors}
    for person in made:
        person.close()
    assert not errors, f"uncaught errors in the page: {errors}"

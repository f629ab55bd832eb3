import pytest

from .servers import ServerProcess

# Scenarios deselected by pytest.ini's `-m "not needs_presence"`: named in the summary,
# so waiting tests are never dropped silently.
_waiting_for_presence = []


def pytest_deselected(items):
    _waiting_for_presence.extend(
        item.nodeid for item in items if item.get_closest_marker("needs_presence")
    )


def pytest_terminal_summary(terminalreporter):
    if not _waiting_for_presence:
        return
    write = terminalreporter.write_line
    terminalreporter.section("NOT RUN: needs_presence", sep="!", yellow=True, bold=True)
    write(
        f"{len(_waiting_for_presence)} browser scenarios wait for the presence branch "
        '(deselected by pytest.ini\'s -m "not needs_presence"; delete it at merge):',
        yellow=True,
    )
    for nodeid in _waiting_for_presence:
        write(f"  {nodeid}", yellow=True)


@pytest.fixture
def server(transactional_db):
    """A real server process (the Procfile's web line) on this run's database."""
    process = ServerProcess().start()
    yield process
    process.stop()


@pytest.fixture
def browser_server(transactional_db, lobby):
    """A server for browser tests, limits raised so their own traffic is never refused."""
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
    """people("alice", viewport=PHONE) → a logged-in Person; page errors fail the test."""
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

import pytest

from .servers import ServerProcess


@pytest.fixture
def server(transactional_db, settings):
    """A real server process (the Procfile's web line) on this run's database."""
    # This test's Redis key prefix, so rate-limit windows start empty.
    process = ServerProcess(REDIS_KEY_PREFIX=settings.REDIS_KEY_PREFIX).start()
    yield process
    process.stop()

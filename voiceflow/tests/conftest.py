import pytest

from .servers import ServerProcess


@pytest.fixture
def server(transactional_db):
    """A real server process (the Procfile's web line) on this run's database."""
    process = ServerProcess().start()
    yield process
    process.stop()

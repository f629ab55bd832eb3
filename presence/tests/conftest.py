import pytest

from voiceflow.tests.servers import RedisServer


@pytest.fixture(scope="session")
def private_redis():
    """A redis-server of our own on a free port (killed at the end): its URL."""
    server = RedisServer().start()
    yield server.url
    server.kill()

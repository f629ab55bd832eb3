import shutil
import subprocess
import time

import pytest
import redis

from voiceflow.tests.servers import free_port


@pytest.fixture(scope="session")
def private_redis():
    """A redis-server of our own on a free port (killed at the end): its URL."""
    binary = shutil.which("redis-server")
    assert binary, "redis-server is required for these tests"
    port = free_port()
    process = subprocess.Popen(
        [
            binary,
            "--port",
            str(port),
            "--bind",
            "127.0.0.1",
            "--save",
            "",
            "--appendonly",
            "no",
        ],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.STDOUT,
    )
    url = f"redis://127.0.0.1:{port}/0"
    client = redis.Redis.from_url(url)
    for _ in range(100):
        try:
            client.ping()
            break
        except redis.ConnectionError:
            time.sleep(0.05)
    client.close()
    yield url
    process.kill()
    process.wait()

"""Store-module Redis clients against a real Redis."""

import asyncio

from voiceflow import redis as store_redis
from voiceflow.redis import redis_client, redis_key, redis_sync_client


async def test_commands_wait_for_a_free_connection_instead_of_failing(
    settings, test_redis_url
):
    settings.REDIS_MAX_CONNECTIONS = 2
    client = redis_client(test_redis_url)
    key = redis_key("pool-test")
    # 50 scripts at once on 2 connections: each waits its turn, none is refused.
    results = await asyncio.gather(
        *[client.eval("return redis.call('INCR', KEYS[1])", 1, key) for _ in range(50)]
    )
    assert sorted(results) == list(range(1, 51))
    await client.delete(key)


def test_the_sync_client_waits_too(settings, test_redis_url, monkeypatch):
    monkeypatch.setattr(store_redis, "_sync_clients", {})
    settings.REDIS_MAX_CONNECTIONS = 1
    client = redis_sync_client(test_redis_url)
    assert client.connection_pool.max_connections == 1
    assert client.ping()

"""Store-module Redis clients against a real Redis."""

import asyncio
import hashlib
import signal

import pytest
import redis

from voiceflow import redis as store_redis
from voiceflow.redis import PipelinedRedis, redis_client, redis_key, redis_sync_client


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


# PipelinedRedis: the hot path's client (rate limits, tickets, presence, publishes).


async def test_commands_issued_together_get_their_own_replies_in_order(test_redis_url):
    client = PipelinedRedis(test_redis_url)
    key = redis_key("pipe-order")
    try:
        replies = await asyncio.gather(
            *[client.execute_command("INCR", key) for _ in range(200)]
        )
        assert replies == list(range(1, 201))
    finally:
        await client.execute_command("DEL", key)
        client.close()


async def test_an_error_reply_fails_only_its_own_command(test_redis_url):
    client = PipelinedRedis(test_redis_url)
    key = redis_key("pipe-error")
    try:
        await client.set(key, "text")
        wrong, right = await asyncio.gather(
            client.execute_command("INCR", key),
            client.getdel(key),
            return_exceptions=True,
        )
        assert isinstance(wrong, redis.exceptions.ResponseError)
        assert right == "text"
    finally:
        client.close()


async def test_it_uses_the_database_named_in_the_url(test_redis_url):
    client = PipelinedRedis(test_redis_url)
    key = redis_key("pipe-db")
    try:
        assert await client.set(key, "1", ex=60)
        assert redis_sync_client(test_redis_url).get(key) == "1"
    finally:
        await client.getdel(key)
        client.close()


async def test_a_script_is_loaded_again_after_a_script_flush(redis_server):
    client = PipelinedRedis(redis_server.url)
    script = client.register_script("return ARGV[1] .. KEYS[1]")
    try:
        assert await script(keys=["b"], args=["a"]) == "ab"
        await client.execute_command("SCRIPT", "FLUSH")
        with pytest.raises(redis.exceptions.NoScriptError):
            await client.evalsha(hashlib.sha1(b"return 1").hexdigest(), 0)
        assert await script(keys=["d"], args=["c"]) == "cd"
    finally:
        client.close()


async def test_a_lost_redis_fails_commands_and_a_restarted_one_serves_again(
    redis_server,
):
    client = PipelinedRedis(redis_server.url)
    try:
        assert await client.ping()
        redis_server.kill()
        with pytest.raises(redis.exceptions.ConnectionError):
            await client.ping()
        with pytest.raises(redis.exceptions.ConnectionError):
            await client.ping()  # refused while down: fails at once, never hangs
        redis_server.start()
        assert await client.ping()
    finally:
        client.close()


async def test_a_stuck_redis_times_out_every_waiting_command(settings, redis_server):
    settings.REDIS_STORE_TIMEOUT = 0.3
    client = PipelinedRedis(redis_server.url)
    try:
        assert await client.ping()
        redis_server.process.send_signal(signal.SIGSTOP)
        loop = asyncio.get_running_loop()
        started = loop.time()
        results = await asyncio.gather(
            client.ping(), client.getdel("x"), return_exceptions=True
        )
        assert all(isinstance(r, redis.exceptions.TimeoutError) for r in results)
        assert loop.time() - started < 2
    finally:
        redis_server.process.send_signal(signal.SIGCONT)
    try:
        assert await client.ping()  # a new connection once Redis answers again
    finally:
        client.close()

"""Store-module Redis clients against a real Redis, and every client stack finding
the primary through Sentinel."""

import asyncio
import hashlib
import signal
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import asdict

import pytest
import redis
from django_redis.cache import RedisCache

from voiceflow import health
from voiceflow import redis as store_redis
from voiceflow.redis import (
    cache_config,
    redis_key,
    redis_sync_client,
)
from voiceflow.runtime import runtime
from voiceflow.runtime.layers import PubSubChannelLayer
from voiceflow.runtime.pipelined_redis import PipelinedRedis

from .servers import RedisServer, free_port


def test_commands_wait_for_a_free_connection_instead_of_failing(
    settings, test_redis_url, monkeypatch
):
    monkeypatch.setattr(store_redis, "_sync_clients", {})
    settings.REDIS_MAX_CONNECTIONS = 2
    client = redis_sync_client(test_redis_url)
    assert client.connection_pool.max_connections == 2
    key = redis_key("pool-test")
    # 50 scripts at once on 2 connections: each waits its turn, none is refused.
    with ThreadPoolExecutor(max_workers=50) as threads:
        results = list(
            threads.map(
                lambda _: client.eval("return redis.call('INCR', KEYS[1])", 1, key),
                range(50),
            )
        )
    assert sorted(results) == list(range(1, 51))
    client.delete(key)


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


async def test_a_replica_s_readonly_reply_drops_the_connection(redis_server):
    # What a primary demoted by a failover answers to writes: the client connects
    # again (through Sentinel, to the new primary) instead of writing to it forever.
    replica = RedisServer("--replicaof", "127.0.0.1", str(redis_server.port)).start()
    client = PipelinedRedis(replica.url)
    try:
        wait_for(
            lambda: direct(replica).info("replication")["master_link_status"] == "up",
            10,
            "the replica did not sync",
        )
        assert await client.ping()
        first = client.pipe
        with pytest.raises(redis.exceptions.ConnectionError, match="READONLY"):
            await client.set("k", "v")
        assert first.closed
        assert await client.ping() and client.pipe is not first
    finally:
        client.close()
        replica.kill()


async def _outcome(client, *command):
    """execute_nowait's outcome: the error its `done` was called with, or None."""
    done = asyncio.get_running_loop().create_future()
    client.execute_nowait(done.set_result, *command)
    return await asyncio.wait_for(done, 5)


async def test_a_command_not_waited_for_still_reports_how_it_went(redis_server):
    client = PipelinedRedis(redis_server.url)
    key = redis_key("nowait")
    try:
        # Not connected yet: it connects first; connected: it joins the turn's write.
        assert await _outcome(client, "SET", key, "1") is None
        assert client.pipe is not None and not client.pipe.closed
        assert await _outcome(client, "INCR", key) is None
        assert await client.getdel(key) == "2"
        error = await _outcome(client, "HGET", key)  # wrong arity: Redis refuses it
        assert isinstance(error, redis.exceptions.ResponseError)
        redis_server.kill()
        assert isinstance(
            await _outcome(client, "PING"), redis.exceptions.ConnectionError
        )
    finally:
        client.close()


async def test_a_command_not_waited_for_drops_a_replica_s_connection(redis_server):
    replica = RedisServer("--replicaof", "127.0.0.1", str(redis_server.port)).start()
    client = PipelinedRedis(replica.url)
    try:
        assert await client.ping()
        first = client.pipe
        error = await _outcome(client, "SET", "k", "v")
        assert isinstance(error, redis.exceptions.ConnectionError)
        assert "READONLY" in str(error) and first.closed
    finally:
        client.close()
        replica.kill()


# Sentinel: every client stack asks the Sentinels for the primary and follows a
# failover by itself.

MASTER = "vf-test"


def sentinel_conf(path, primary_port):
    path.write_text(
        f"sentinel monitor {MASTER} 127.0.0.1 {primary_port} 1\n"
        f"sentinel down-after-milliseconds {MASTER} 500\n"
        f"sentinel failover-timeout {MASTER} 2000\n"
    )
    return path


def direct(server):
    return redis.Redis(port=server.port, decode_responses=True, socket_timeout=2)


def wait_for(check, timeout, what):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            if check():
                return
        except redis.RedisError:
            pass
        time.sleep(0.05)
    pytest.fail(f"{what} within {timeout} s")


async def eventually(attempt, since, timeout=20):
    """Seconds from `since` until `attempt()` first succeeds (errors meanwhile)."""
    loop = asyncio.get_running_loop()
    while loop.time() - since < timeout:
        try:
            if await attempt() not in (False, None):
                return round(loop.time() - since, 2)
        except (redis.RedisError, TimeoutError):
            pass
        await asyncio.sleep(0.05)
    pytest.fail(f"not within {timeout} s")


@pytest.fixture
def sentinel_set(redis_server, tmp_path):
    """A private primary, a replica of it and one Sentinel watching them."""
    primary = redis_server
    replica = RedisServer("--replicaof", "127.0.0.1", str(primary.port)).start()
    sentinel = RedisServer(
        "--sentinel", config=sentinel_conf(tmp_path / "sentinel.conf", primary.port)
    ).start()
    try:
        wait_for(
            lambda: any(
                r["master-link-status"] == "ok"
                for r in direct(sentinel).sentinel_slaves(MASTER)
            ),
            10,
            "the Sentinel did not see the replica in sync",
        )
        yield primary, replica, sentinel
    finally:
        sentinel.kill()
        replica.kill()


async def test_every_client_finds_the_primary_through_sentinel_and_follows_a_failover(
    settings, sentinel_set, monkeypatch
):
    primary, replica, sentinel = sentinel_set
    # A Sentinel that is down is skipped; REDIS_URL gives the database only.
    settings.REDIS_URL = f"redis://{MASTER}/0"
    settings.REDIS_SENTINELS = (
        ("127.0.0.1", free_port()),
        ("127.0.0.1", sentinel.port),
    )
    settings.REDIS_SENTINEL_MASTER = MASTER
    address = store_redis.redis_address()
    assert address.sentinels == settings.REDIS_SENTINELS
    monkeypatch.setattr(store_redis, "_sync_clients", {})
    store = runtime().redis()
    sync = redis_sync_client()
    conf = cache_config(address, key_prefix="t", timeout=1, max_connections=10)
    cache = RedisCache(conf["LOCATION"], conf)
    layer = PubSubChannelLayer(shards=[asdict(address)], prefix="vf-test:layer:")
    channel = await layer.new_channel()
    await layer.group_add("room.x", channel)
    received: asyncio.Queue = asyncio.Queue()

    async def receive():
        while True:
            received.put_nowait((await layer.receive(channel))["text"])

    receiver = asyncio.ensure_future(receive())
    key = redis_key("sentinel")

    async def published(text, timeout):
        await layer.group_send("room.x", {"type": "x", "text": text})
        return await asyncio.wait_for(received.get(), timeout)

    try:
        assert await store.set(key, "store")
        assert sync.set(f"{key}:sync", "sync")
        cache.set("cache", "cached")
        assert await published("before", 2) == "before"
        assert await health.redis_check(1) is True
        assert direct(primary).get(key) == "store"  # the primary, not the replica
        assert direct(primary).get(f"{key}:sync") == "sync"

        primary.kill()
        killed_at = asyncio.get_running_loop().time()
        # Errors while the Sentinel fails over; then each client finds the replica.
        took = {
            "store": await eventually(lambda: store.set(key, "after"), killed_at),
            "sync": await eventually(
                lambda: asyncio.to_thread(sync.set, f"{key}:sync", "after"), killed_at
            ),
            "cache": await eventually(
                lambda: asyncio.to_thread(cache.set, "cache", "after"), killed_at
            ),
            "health": await eventually(lambda: health.redis_check(1), killed_at),
            "layer": await eventually(lambda: published("after", 0.25), killed_at),
        }
        print(f"\nprimary killed; each client on the new one after (s): {took}")
        assert int(direct(sentinel).sentinel_get_master_addr_by_name(MASTER)[1]) == (
            replica.port
        )
        new_primary = direct(replica)
        assert new_primary.get(key) == "after", "not written to the new primary"
        assert new_primary.get(f"{key}:sync") == "after"
        assert await asyncio.to_thread(cache.get, "cache") == "after"
    finally:
        receiver.cancel()
        await asyncio.gather(receiver, return_exceptions=True)
        await layer.flush()
        sync.close()

"""The sliding-window limiter: one suite, on real Redis and on the in-memory twin."""

import asyncio

import pytest
import redis

from chat import ratelimit
from chat.errors import Unavailable
from chat.ratelimit import MemoryRateLimiter, RedisRateLimiter
from voiceflow.breaker import redis_breaker

NOW = 1_764_000_000.0  # a clock passed in: windows slide without sleeping


@pytest.fixture(params=["redis", "memory"])
def limiter(request):
    if request.param == "memory":
        return MemoryRateLimiter()
    return RedisRateLimiter(request.getfixturevalue("test_redis_url"))


@pytest.fixture
def key(settings):
    # The autouse fixture gives every test its own REDIS_KEY_PREFIX.
    return f"{settings.REDIS_KEY_PREFIX}:rl:test:user-1"


async def hits(limiter, key, times, limit=30, window=60):
    return [await limiter.hit(key, limit, window, NOW + t) for t in times]


async def test_exactly_the_limit_is_allowed_within_a_window(limiter, key):
    decisions = await hits(limiter, key, [i * 0.1 for i in range(31)])
    assert [d.allowed for d in decisions] == [True] * 30 + [False]


async def test_retry_after_is_when_the_oldest_counted_hit_leaves_the_window(
    limiter, key
):
    await hits(limiter, key, range(30))  # one hit a second, t = 0 … 29
    refused = (await hits(limiter, key, [40]))[0]
    assert not refused.allowed
    assert refused.retry_after == pytest.approx(20, abs=0.001)
    last_moment = (await hits(limiter, key, [59.999]))[0]
    assert not last_moment.allowed and last_moment.retry_after == pytest.approx(
        0.001, abs=1e-4
    )


async def test_after_the_window_slides_one_slot_frees_per_expired_hit(limiter, key):
    await hits(limiter, key, range(30))
    assert (await hits(limiter, key, [60]))[0].allowed  # the hit at t=0 has left
    again = (await hits(limiter, key, [60.5]))[0]
    assert not again.allowed  # the hit at t=1 still counts until t=61
    assert again.retry_after == pytest.approx(0.5, abs=0.001)
    assert (await hits(limiter, key, [61]))[0].allowed


async def test_the_window_slides_rather_than_resetting_on_a_boundary(limiter, key):
    first, second = await hits(limiter, key, [0, 9], limit=2, window=10)
    assert first.allowed and second.allowed
    assert (await hits(limiter, key, [10], limit=2, window=10))[0].allowed
    assert not (await hits(limiter, key, [11], limit=2, window=10))[0].allowed
    assert (await hits(limiter, key, [19], limit=2, window=10))[0].allowed


async def test_refused_hits_are_not_counted_so_they_never_extend_the_wait(limiter, key):
    await hits(limiter, key, [0, 0, 0], limit=3)
    refused = await hits(limiter, key, [t / 2 for t in range(2, 100)], limit=3)
    assert not any(d.allowed for d in refused)
    assert (await hits(limiter, key, [60], limit=3))[0].allowed


async def test_keys_are_independent(limiter, key):
    await hits(limiter, key, [0] * 30)
    assert (await limiter.hit(key + "-other", 30, 60, NOW)).allowed


async def test_a_refund_frees_the_slot_of_that_hit(limiter, key):
    decisions = await hits(limiter, key, [0, 1, 2], limit=3)
    await limiter.refund(decisions[1])
    assert (await hits(limiter, key, [3], limit=3))[0].allowed
    assert not (await hits(limiter, key, [4], limit=3))[0].allowed


async def test_sync_and_async_checks_share_one_window(limiter, key):
    assert limiter.hit_sync(key, 3, 60, NOW).allowed
    assert (await limiter.hit(key, 3, 60, NOW + 1)).allowed
    assert limiter.hit_sync(key, 3, 60, NOW + 2).allowed
    refused = limiter.hit_sync(key, 3, 60, NOW + 3)
    assert not refused.allowed and refused.retry_after == pytest.approx(57, abs=0.001)
    assert not (await limiter.hit(key, 3, 60, NOW + 3)).allowed


async def test_a_lowered_limit_waits_until_enough_hits_have_left(limiter, key):
    await hits(limiter, key, range(5), limit=5)
    refused = (await hits(limiter, key, [10], limit=2))[0]
    # Four of the five must leave for a new hit to fit under 2: t=3 leaves at 63.
    assert not refused.allowed and refused.retry_after == pytest.approx(53, abs=0.001)


async def test_concurrent_checks_never_allow_more_than_the_limit(limiter, key):
    decisions = await asyncio.gather(
        *(limiter.hit(key, 30, 60, NOW) for _ in range(100))
    )
    assert sum(d.allowed for d in decisions) == 30


async def test_two_limiters_on_one_redis_share_the_window(test_redis_url, key):
    # Two instances with their own connections, as in two server processes.
    process_a = RedisRateLimiter(test_redis_url)
    process_b = RedisRateLimiter(test_redis_url.replace("127.0.0.1", "localhost"))
    for i in range(30):
        assert (await (process_a, process_b)[i % 2].hit(key, 30, 60, NOW + i)).allowed
    assert not (await process_a.hit(key, 30, 60, NOW + 30)).allowed
    assert not process_b.hit_sync(key, 30, 60, NOW + 30).allowed


async def test_redis_keys_expire_one_window_after_the_newest_hit(test_redis_url, key):
    limiter = RedisRateLimiter(test_redis_url)
    await limiter.hit(key, 30, 60, NOW)
    client = redis.Redis.from_url(test_redis_url)
    try:
        assert 59_000 < client.pttl(key) <= 60_000
        assert client.zcard(key) == 1
    finally:
        client.close()


async def test_an_unreachable_redis_is_unavailable_never_allowed(redis_server, key):
    limiter = RedisRateLimiter(redis_server.url)
    assert (await limiter.hit(key, 30, 60, NOW)).allowed
    redis_server.kill()
    with pytest.raises(Unavailable):
        await limiter.hit(key, 30, 60, NOW + 1)
    with pytest.raises(Unavailable):
        limiter.hit_sync(key, 30, 60, NOW + 1)


async def test_the_script_is_loaded_again_after_a_redis_script_flush(redis_server, key):
    limiter = RedisRateLimiter(redis_server.url)
    assert (await limiter.hit(key, 2, 60, NOW)).allowed
    redis.Redis.from_url(redis_server.url).script_flush()
    assert (await limiter.hit(key, 2, 60, NOW)).allowed  # EVALSHA misses, EVAL loads
    assert not limiter.hit_sync(key, 2, 60, NOW).allowed


async def test_the_shared_limiter_works_after_a_script_flush_on_both_paths(
    redis_server, settings, set_rate
):
    settings.REDIS_URL = redis_server.url
    set_rate("message", 4)
    admin = redis.Redis.from_url(redis_server.url)
    try:
        assert ratelimit.rate_hit_sync("message", 1, now=NOW).allowed
        assert (await ratelimit.rate_hit("message", 1, now=NOW)).allowed
        admin.script_flush()
        sync_hit = ratelimit.rate_hit_sync("message", 1, now=NOW + 1)
        assert sync_hit.allowed and not sync_hit.local  # loaded again, still in Redis
        admin.script_flush()
        async_hit = await ratelimit.rate_hit("message", 1, now=NOW + 2)
        assert async_hit.allowed and not async_hit.local
        assert not (await ratelimit.rate_hit("message", 1, now=NOW + 3)).allowed
        assert not ratelimit.rate_hit_sync("message", 1, now=NOW + 3).allowed
    finally:
        admin.close()


# Named limits, the multiplier and refunds, through the configured backend.


def test_named_limits_come_from_settings_scaled_by_the_multiplier(settings):
    assert ratelimit.rate("message") == (30, 60)
    assert ratelimit.rate("rest") == (1000, 900)
    settings.VOICEFLOW = {**settings.VOICEFLOW, "RATE_LIMIT_MULTIPLIER": 1000}
    assert ratelimit.rate("message") == (30_000, 60)
    assert ratelimit.rate("connect") == (60_000, 60)
    settings.VOICEFLOW = {**settings.VOICEFLOW, "RATE_LIMIT_MULTIPLIER": 0.001}
    assert ratelimit.rate("join") == (1, 60)  # never below one


async def test_a_refund_with_redis_down_is_swallowed(redis_server, settings, set_rate):
    settings.REDIS_URL = redis_server.url
    set_rate("message", 5)
    decision = await ratelimit.rate_hit("message", 1)
    redis_server.kill()
    await ratelimit.rate_refund(decision)  # logs nothing fatal, raises nothing


# Redis unreachable: this process's memory, at the same rates, until it answers.


@pytest.fixture
def down(redis_server, settings, set_rate, breaker_clock):
    """Limits on a private Redis, 3 messages a minute; the breaker on a clock."""
    settings.REDIS_URL = redis_server.url
    set_rate("message", 3)
    return breaker_clock


async def test_with_redis_unreachable_limits_hold_in_memory_at_the_same_rate(
    down, redis_server
):
    assert not (await ratelimit.rate_hit("message", 1, now=NOW)).local
    redis_server.kill()
    decisions = [await ratelimit.rate_hit("message", 1, now=NOW + t) for t in (1, 2)]
    decisions += [await ratelimit.rate_hit("message", 1, now=NOW + 3) for _ in "ab"]
    assert [(d.allowed, d.local) for d in decisions] == [
        (True, True),
        (True, True),
        (True, True),  # the hit counted in Redis is not known here
        (False, True),
    ]
    assert decisions[-1].retry_after == pytest.approx(58)  # the hit at NOW + 1
    assert redis_breaker.down
    await ratelimit.rate_refund(decisions[0])  # a refund frees the slot in memory
    assert (await ratelimit.rate_hit("message", 1, now=NOW + 4)).allowed
    assert not (await ratelimit.rate_hit("message", 1, now=NOW + 4)).allowed


async def test_once_redis_answers_again_limits_are_counted_there_again(
    down, redis_server
):
    redis_server.kill()
    assert (await ratelimit.rate_hit("message", 1, now=NOW)).local
    redis_server.start()
    down.now += 0.5
    assert (await ratelimit.rate_hit("message", 1, now=NOW)).local  # not yet asked
    assert redis_breaker.probing is None
    down.now += 0.5
    assert (await ratelimit.rate_hit("message", 1, now=NOW)).local  # asks, meanwhile
    await redis_breaker.probing
    assert not redis_breaker.down
    decision = await ratelimit.rate_hit("message", 1, now=NOW)
    assert decision.allowed and not decision.local


def test_sync_checks_fall_back_and_come_back_alike(down, redis_server):
    assert not ratelimit.rate_hit_sync("message", 2, now=NOW).local
    redis_server.kill()
    assert [ratelimit.rate_hit_sync("message", 2, now=NOW).allowed for _ in "abcd"] == [
        True,
        True,
        True,
        False,
    ]
    redis_server.start()
    assert ratelimit.rate_hit_sync("message", 2, now=NOW).local  # not asked yet
    down.now += 1
    decision = ratelimit.rate_hit_sync("message", 2, now=NOW)  # asks, then counts
    assert (decision.allowed, decision.local) == (True, False)


# Client IPs: the peer, unless a trusted proxy says otherwise.


@pytest.mark.parametrize(
    "peer,forwarded,trusted,expected",
    [
        ("1.2.3.4", None, [], "1.2.3.4"),
        ("1.2.3.4", "6.6.6.6", [], "1.2.3.4"),  # not trusted: the header is ignored
        ("10.0.0.1", "6.6.6.6", [], "10.0.0.1"),
        ("10.0.0.1", "1.2.3.4", ["10.0.0.0/8"], "1.2.3.4"),
        (
            "10.0.0.1",
            "6.6.6.6, 1.2.3.4, 10.0.0.7",
            ["10.0.0.0/8"],
            "1.2.3.4",
        ),  # spoofed left
        ("10.0.0.1", "10.0.0.9, 10.0.0.7", ["10.0.0.0/8"], "10.0.0.9"),
        ("10.0.0.1", "junk, 1.2.3.4", ["10.0.0.1"], "1.2.3.4"),
        ("10.0.0.1", "1.2.3.4, junk", ["10.0.0.1"], "10.0.0.1"),  # garbled: the proxy
        ("::1", "2001:db8::5", ["::1"], "2001:db8::5"),
        (None, "1.2.3.4", [], "unknown"),
    ],
)
def test_client_ip(settings, peer, forwarded, trusted, expected):
    settings.TRUSTED_PROXIES = trusted
    assert ratelimit.client_ip(peer, forwarded) == expected


def test_scope_client_ip_reads_the_asgi_client_and_forwarded_headers(settings):
    settings.TRUSTED_PROXIES = ["127.0.0.1"]
    scope = {
        "client": ("127.0.0.1", 5000),
        "headers": [(b"x-forwarded-for", b"8.8.4.4")],
    }
    assert ratelimit.scope_client_ip(scope) == "8.8.4.4"
    settings.TRUSTED_PROXIES = []
    assert ratelimit.scope_client_ip(scope) == "127.0.0.1"

"""WebSocket tickets: one suite, run on real Redis and on the in-memory twin."""

import asyncio

import pytest

from chat import tickets
from chat.errors import Unavailable
from voiceflow.breaker import redis_breaker


@pytest.fixture(params=["redis", "memory"])
def store(request, settings):
    """Shared mode on the run's Redis, or embedded mode (this process's memory)."""
    if request.param == "memory":
        settings.REDIS_URL = ""
    else:
        settings.REDIS_URL = request.getfixturevalue("test_redis_url")
    return request.param


async def test_a_ticket_is_redeemed_once_for_its_user(store):
    ticket = await asyncio.to_thread(tickets.ticket_issue, 42)
    assert await tickets.ticket_redeem(ticket) == 42
    assert await tickets.ticket_redeem(ticket) is None


async def test_a_ticket_issued_on_the_loop_is_redeemed_once_for_its_user(store):
    ticket = await tickets.ticket_aissue(42)
    assert await tickets.ticket_redeem(ticket) == 42
    assert await tickets.ticket_redeem(ticket) is None


async def test_of_two_racing_redeems_exactly_one_wins(store):
    ticket = await asyncio.to_thread(tickets.ticket_issue, 7)
    results = await asyncio.gather(*[tickets.ticket_redeem(ticket) for _ in range(5)])
    assert sorted(results, key=str) == [7, None, None, None, None]


@pytest.mark.parametrize("ticket", ["", "x" * 129, None, "never-issued"])
async def test_unknown_or_malformed_tickets_are_refused(store, ticket):
    assert await tickets.ticket_redeem(ticket) is None


async def test_a_ticket_expires_after_its_ttl(store, settings):
    settings.VOICEFLOW = {**settings.VOICEFLOW, "TICKET_TTL": 1}
    ticket = await asyncio.to_thread(tickets.ticket_issue, 3)
    issued_on_the_loop = await tickets.ticket_aissue(3)
    await asyncio.sleep(1.1)
    assert await tickets.ticket_redeem(ticket) is None
    assert await tickets.ticket_redeem(issued_on_the_loop) is None


def test_the_store_keeps_only_a_hash_of_the_ticket(store):
    ticket = tickets.ticket_issue(5)
    assert ticket not in tickets._key(ticket)


# Redis unreachable: tickets in this process's memory, redeemable here once.


async def test_with_redis_down_a_ticket_is_issued_and_redeemed_here_once(
    redis_server, settings
):
    settings.REDIS_URL = redis_server.url
    in_redis = await tickets.ticket_aissue(1)
    redis_server.kill()
    issued = [
        await tickets.ticket_aissue(2),
        await asyncio.to_thread(tickets.ticket_issue, 3),
    ]
    assert all(t.startswith(tickets.LOCAL_MARK) for t in issued)
    assert [await tickets.ticket_redeem(t) for t in issued] == [2, 3]
    # Used, another process's, or in Redis: cannot tell, so unavailable (1013).
    for ticket in [*issued, tickets.LOCAL_MARK + "forged", in_redis]:
        with pytest.raises(Unavailable):
            await tickets.ticket_redeem(ticket)


async def test_a_ticket_issued_while_redis_was_down_is_redeemed_after(
    redis_server, settings, breaker_clock
):
    settings.REDIS_URL = redis_server.url
    redis_server.kill()
    local = await tickets.ticket_aissue(4)
    redis_server.start()
    breaker_clock.now += 1
    assert (await tickets.ticket_aissue(5)).startswith(tickets.LOCAL_MARK)  # asks
    await redis_breaker.probing
    in_redis = await tickets.ticket_aissue(6)
    assert not in_redis.startswith(tickets.LOCAL_MARK)
    assert [await tickets.ticket_redeem(t) for t in (local, in_redis)] == [4, 6]

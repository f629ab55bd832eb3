"""WebSocket tickets: one suite, run on real Redis and on the in-memory twin."""

import asyncio

import pytest

from chat import tickets
from chat.tickets import MemoryTicketStore, RedisTicketStore


@pytest.fixture(params=["redis", "memory"])
def store(request, monkeypatch):
    if request.param == "memory":
        chosen = MemoryTicketStore()
    else:
        chosen = RedisTicketStore(request.getfixturevalue("test_redis_url"))
    monkeypatch.setattr(tickets, "ticket_store", lambda: chosen)
    return chosen


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

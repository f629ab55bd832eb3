"""The presence store: one suite, run against the in-memory twin and real Redis."""

import uuid
from contextlib import asynccontextmanager

import pytest
import redis.asyncio as aioredis
from django.conf import settings

from presence.status import AWAY, OFFLINE, ONLINE
from presence.store import MemoryPresenceStore, RedisPresenceStore
from voiceflow.runtime.pipelined_redis import PipelinedRedis

T0 = 1_800_000_000.0


@asynccontextmanager
async def redis_store_at(request):
    # The run's Redis in the Redis pass; a private redis-server in the embedded pass.
    url = settings.REDIS_URL or request.getfixturevalue("private_redis")
    client = aioredis.Redis.from_url(url, decode_responses=True)
    prefix = f"{settings.REDIS_KEY_PREFIX}:storetest:{uuid.uuid4().hex[:8]}:presence"
    store_client = PipelinedRedis(url)
    try:
        redis_store = RedisPresenceStore(store_client, prefix, ttl=600)
        redis_store.inspect = client  # redis-py's full API, to look at the keys
        yield redis_store
    finally:
        store_client.close()
        keys = [key async for key in client.scan_iter(match=f"{prefix}:*")]
        if keys:
            await client.delete(*keys)
        await client.aclose()


@pytest.fixture(params=["memory", "redis"])
async def store(request):
    if request.param == "memory":
        yield MemoryPresenceStore()
        return
    async with redis_store_at(request) as redis_store:
        yield redis_store


@pytest.fixture
async def redis_store(request):
    async with redis_store_at(request) as store:
        yield store


async def connect(store, sid, uid=1, name="alice", now=T0, cap=20):
    return await store.socket_add(sid, uid, name, "proc-1", now, cap)


async def test_sockets_are_counted_per_user_and_capped(store):
    assert len((await connect(store, "a1", cap=2)).sockets) == 1
    assert len((await connect(store, "a2", cap=2)).sockets) == 2
    assert await connect(store, "a3", cap=2) is None
    assert len((await connect(store, "b1", uid=2, name="bob", cap=2)).sockets) == 1
    user = await store.user_get(1)
    assert user.username == "alice" and len(user.sockets) == 2
    assert user.active_at == T0  # arriving from offline counts as activity


async def test_entering_a_room_returns_the_user_as_user_get_reads_them(store):
    await connect(store, "a1")
    added, user = await store.room_enter("a1", "lobby", T0 + 3)
    assert added is True
    assert user == await store.user_get(1)
    assert user.rooms == {"lobby"} and user.active_at == T0 + 3


async def test_a_socket_that_is_gone_enters_no_room(store):
    assert await store.room_enter("never-connected", "lobby", T0) is None


async def test_adding_a_socket_returns_the_user_as_user_get_reads_them(store):
    await connect(store, "a1")
    await store.room_enter("a1", "lobby", T0)
    added = await connect(store, "a2", now=T0 + 5)
    assert added == await store.user_get(1)
    assert added.rooms == {"lobby"} and added.announced == "offline"


async def test_a_user_is_present_in_a_room_from_their_first_socket_to_their_last(store):
    await connect(store, "a1")
    await connect(store, "a2")
    assert (await store.room_enter("a1", "lobby", T0))[0] is True
    assert (await store.room_enter("a2", "lobby", T0))[0] is False
    assert await store.room_exit("a1", "lobby") is False
    # A room read carries each user's presence but not their rooms.
    user = (await store.user_get(1))._replace(rooms=frozenset())
    assert await store.room_users("lobby") == [(user, 1)]
    assert await store.room_exit("a2", "lobby") is True
    assert await store.room_users("lobby") == []
    assert await store.room_exit("a2", "lobby") is False  # idempotent


async def test_room_users_and_counts_count_connections_of_joined_sockets_only(store):
    await connect(store, "a1")
    await connect(store, "a2")
    await connect(store, "b1", uid=2, name="bob")
    await store.room_enter("a1", "lobby", T0)
    await store.room_enter("a2", "lobby", T0)
    await store.room_enter("b1", "design", T0)
    rows = await store.room_users("lobby")
    assert [(u.username, n) for u, n in rows] == [("alice", 2)]
    assert await store.room_counts(["lobby", "design", "empty"]) == {
        "lobby": 1,
        "design": 1,
        "empty": 0,
    }


async def test_removing_the_last_socket_starts_the_grace_for_rooms_and_user(store):
    await connect(store, "a1")
    await connect(store, "a2")
    await store.room_enter("a1", "lobby", T0)
    await store.room_enter("a2", "lobby", T0)
    await store.room_enter("a2", "design", T0)
    first = await store.socket_remove("a2", T0 + 1)
    assert (first.user_id, first.username, first.departed, first.sockets_left) == (
        1,
        "alice",
        ("design",),
        1,
    )
    last = await store.socket_remove("a1", T0 + 2)
    assert last.departed == ("lobby",) and last.sockets_left == 0
    assert await store.socket_remove("a1", T0 + 2) is None
    assert (await store.user_get(1)).left_at == T0 + 2
    assert sorted(await store.departures_due(T0 + 5), key=str) == sorted(
        [(1, "design"), (1, "lobby"), (1, None)], key=str
    )
    # Still present during the grace period: listed (no socket) until it settles.
    assert (await store.user_get(1)).rooms == {"lobby", "design"}
    [(user, connections)] = await store.room_users("lobby")
    assert (user.username, connections) == ("alice", 0)
    assert await store.room_counts(["lobby", "design"]) == {"lobby": 1, "design": 1}
    assert await store.departure_settle(1, "lobby", T0 + 2)
    assert await store.room_users("lobby") == []
    assert await store.room_counts(["lobby"]) == {"lobby": 0}


async def test_a_departure_settles_once_and_only_when_due(store):
    await connect(store, "a1")
    await store.room_enter("a1", "lobby", T0)
    await store.socket_remove("a1", T0)
    assert await store.departure_settle(1, "lobby", T0 - 1) is False  # not due yet
    assert await store.departure_settle(1, "lobby", T0) is True
    assert await store.departure_settle(1, "lobby", T0) is False  # settled already
    assert await store.departure_settle(1, None, T0) is True
    assert (await store.user_get(1)).rooms == frozenset()


async def test_coming_back_within_the_grace_cancels_the_departures(store):
    await connect(store, "a1")
    await store.room_enter("a1", "lobby", T0)
    await store.socket_remove("a1", T0)
    await connect(store, "a2", now=T0 + 1)
    added, _ = await store.room_enter("a2", "lobby", T0 + 1)
    assert added is False  # no new member_joined
    assert await store.departures_due(T0 + 100) == []
    assert await store.departure_settle(1, "lobby", T0 + 100) is False
    assert (await store.user_get(1)).left_at is None


async def test_status_swap_is_a_compare_and_set(store):
    await connect(store, "a1")
    assert (await store.user_get(1)).announced == OFFLINE
    assert await store.status_swap(1, OFFLINE, ONLINE) is True
    assert await store.status_swap(1, OFFLINE, AWAY) is False
    assert (await store.user_get(1)).announced == ONLINE


async def test_idle_users_are_claimed_once(store):
    await connect(store, "a1")
    await connect(store, "b1", uid=2, name="bob", now=T0 + 50)
    await store.status_swap(1, OFFLINE, ONLINE)
    await store.status_swap(2, OFFLINE, ONLINE)
    assert await store.users_idle(T0 + 10) == [1]
    assert await store.users_idle(T0 + 10) == []
    await store.socket_touch(
        "a1", T0 + 60, active=True
    )  # activity makes them a candidate again
    assert sorted(await store.users_idle(T0 + 100)) == [1, 2]


async def test_touch_and_away_flags(store):
    await connect(store, "a1")
    assert await store.socket_touch("a1", T0 + 5) is True
    assert await store.socket_touch("nope", T0 + 5) is False
    assert await store.socket_set_away("a1", True, T0 + 6) == 1
    user = await store.user_get(1)
    assert [(s.seen_at, s.away) for s in user.sockets] == [(T0 + 5, True)]
    assert user.active_at == T0  # touch without activity, away: no activity
    await store.socket_set_away("a1", False, T0 + 7)
    assert (await store.user_get(1)).active_at == T0 + 7  # `status: online` is activity


async def test_dead_sockets_are_found_by_last_seen(store):
    await connect(store, "a1")
    await connect(store, "b1", uid=2, name="bob")
    await store.socket_touch("b1", T0 + 30)
    assert await store.sockets_dead(T0 + 10) == [("a1", T0)]
    await store.socket_remove("a1", T0)
    assert await store.sockets_dead(T0 + 10) == []


async def test_a_socket_whose_keys_expired_is_still_dropped_from_the_index(
    redis_store,
):
    store = redis_store  # keys expire only in Redis
    await connect(store, "a1")
    await store.inspect.delete(f"{store.prefix}:s:a1")  # as if its TTL ran out
    assert await store.socket_remove("a1", T0) is None
    assert await store.sockets_dead(T0 + 10) == []


async def test_totals_count_statuses_and_sockets(store):
    await connect(store, "a1")
    await connect(store, "b1", uid=2, name="bob")
    await store.room_enter("a1", "lobby", T0)
    await store.status_swap(1, OFFLINE, ONLINE)
    await store.status_swap(2, OFFLINE, AWAY)
    assert await store.totals() == {"online": 1, "away": 1, "sockets": 2, "rooms": 1}
    await store.status_swap(2, AWAY, ONLINE)
    await store.room_exit("a1", "lobby")
    assert await store.totals() == {"online": 2, "away": 0, "sockets": 2, "rooms": 0}
    await store.status_swap(1, ONLINE, OFFLINE)
    assert (await store.totals())["online"] == 1


async def test_the_sweep_repairs_totals_whose_keys_expired_unseen(redis_store):
    store = redis_store  # keys expire only in Redis
    await connect(store, "a1")
    await store.room_enter("a1", "lobby", T0)
    await store.status_swap(1, OFFLINE, AWAY)
    # As if the user's and the room's TTLs ran out (their process died, no sweeper).
    await store.inspect.delete(f"{store.prefix}:u:1", f"{store.prefix}:r:lobby")
    assert await store.totals_repair() == 2
    assert await store.totals() == {"online": 0, "away": 0, "sockets": 1, "rooms": 0}
    assert await store.totals_repair() == 0


async def test_every_redis_key_expires(store):
    if isinstance(store, MemoryPresenceStore):
        # The twin holds no keys; what would leak is what the sweep must remove.
        await connect(store, "a1")
        await store.socket_remove("a1", T0)
        await store.departure_settle(1, None, T0)
        await store.status_swap(1, OFFLINE, ONLINE)
        await store.status_swap(1, ONLINE, OFFLINE)
        assert store.users == {} and store.sockets == {} and store.gone == {}
        return
    await connect(store, "a1")
    await store.room_enter("a1", "lobby", T0)
    await store.status_swap(1, OFFLINE, ONLINE)
    await store.socket_touch("a1", T0 + 1, active=True)
    await connect(store, "b1", uid=2, name="bob")
    await store.room_enter("b1", "lobby", T0)
    await store.socket_remove("b1", T0)
    keys = [key async for key in store.inspect.scan_iter(match=f"{store.prefix}:*")]
    assert len(keys) >= 8
    for key in keys:
        assert 0 < await store.inspect.ttl(key) <= 600, key


async def test_member_events_that_wait_leave_the_room_set_as_announced(store):
    await connect(store, "a1")
    added, _ = await store.room_enter("a1", "lobby", T0, announce=False)
    assert not added and await store.room_counts(["lobby"]) == {"lobby": 0}
    assert await store.room_announce(1, "lobby") is True  # member_joined now
    assert await store.room_announce(1, "lobby") is False
    assert await store.room_counts(["lobby"]) == {"lobby": 1}
    # A leave whose member_left waits: listed until its departure is settled.
    assert await store.room_exit("a1", "lobby", T0 + 1, announce=False) is False
    assert await store.room_counts(["lobby"]) == {"lobby": 1}
    assert await store.room_announce(1, "lobby") is False  # no socket there
    assert await store.departure_settle(1, "lobby", T0 + 0.5) is False  # a later one
    assert await store.departure_settle(1, "lobby", T0 + 1) is True
    assert await store.room_counts(["lobby"]) == {"lobby": 0}
    assert (await store.totals())["rooms"] == 0

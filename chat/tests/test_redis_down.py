"""Redis unreachable: posting goes on (rate limits per process), delivery stays on this
process, typing and presence pause without errors, tickets fall back to memory; all
of it on a private Redis (channel layer included) that the test kills."""

import asyncio

import pytest
import redis
from asgiref.sync import sync_to_async
from channels.testing import WebsocketCommunicator
from django.conf import settings as django_settings
from rest_framework.authtoken.models import Token
from rest_framework.test import APIClient

from chat import broadcast
from chat.models import Message, Room
from chat.tickets import LOCAL_MARK, ticket_issue
from voiceflow.asgi import application
from voiceflow.breaker import redis_breaker
from voiceflow.runtime import runtime

pytestmark = pytest.mark.django_db(transaction=True)


@pytest.fixture
def private_redis(redis_server, settings, lobby):
    """Everything Redis holds, the channel layer too, on a Redis the test may kill."""
    settings.REDIS_URL = redis_server.url
    settings.CHANNEL_LAYERS = {
        "default": {
            "BACKEND": "voiceflow.runtime.layers.PubSubChannelLayer",
            "CONFIG": {
                "shards": [{"url": redis_server.url}],
                "prefix": f"{settings.REDIS_KEY_PREFIX}:layer:",
            },
        }
    }
    Room.objects.get_or_create(slug="design", defaults={"name": "Design"})
    return redis_server


async def connect(user=None, ticket=None):
    """A socket and its hello (or the close that came instead)."""
    if ticket is None:
        ticket = await sync_to_async(ticket_issue)(user.pk)
    socket = WebsocketCommunicator(application, f"/ws/chat/?ticket={ticket}")
    assert (await socket.connect())[0]
    return socket, await socket.receive_output()


async def reply(socket, kind, *passing):
    """The next frame of type `kind`: presence events (and frames of the `passing`
    types) that come first are read."""
    passing = ("presence", "member_joined", "member_left", *passing)
    while True:
        frame = await socket.receive_json_from(timeout=2)
        if frame["type"] == kind:
            return frame
        assert frame["type"] in passing, frame


async def joined(user, room="lobby"):
    socket, hello = await connect(user)
    assert '"hello"' in hello["text"]
    await socket.send_json_to({"type": "join", "room": room})
    await reply(socket, "joined")
    return socket


async def quiet(socket):
    """True if nothing but presence events came (they may still be in flight)."""
    await asyncio.sleep(0.2)
    while not socket.output_queue.empty():
        frame = await socket.receive_json_from()
        if frame["type"] not in ("presence", "member_joined", "member_left"):
            return False
    return True


async def post(socket, body, room="lobby"):
    await socket.send_json_to(
        {"type": "message", "room": room, "body": body, "client_id": body}
    )


async def test_with_redis_gone_messages_are_acked_and_delivered_on_this_process(
    alice, bob, private_redis, breaker_clock, set_rate
):
    set_rate("message", 3)
    sender, watcher = await joined(alice), await joined(bob)
    private_redis.kill()

    for n in range(3):
        await post(sender, f"down-{n}")
        assert (await reply(sender, "ack"))["client_id"] == f"down-{n}"
        for socket in (sender, watcher):
            assert (await reply(socket, "message"))["body"] == f"down-{n}"
    assert redis_breaker.down
    # This process's limit, at the contract's rate, holds meanwhile.
    await post(sender, "one too many")
    refused = await reply(sender, "error")
    assert (refused["code"], refused["ref"]) == ("rate_limited", "one too many")
    assert 59 < refused["retry_after"] <= 60
    assert await sync_to_async(Message.objects.count)() == 3

    # Typing and presence pause: no error, nothing sent.
    await watcher.send_json_to({"type": "typing", "room": "lobby", "state": "start"})
    await watcher.send_json_to({"type": "status", "status": "away"})
    assert await quiet(watcher) and await quiet(sender)
    # A room joined meanwhile is served on this process at once.
    for socket in (sender, watcher):
        await socket.send_json_to({"type": "join", "room": "design"})
        assert (await reply(socket, "joined"))["members"] == []
    assert broadcast.hub_sizes()["hubUnsubscribed"] == 1
    set_rate("message", 10)
    await post(sender, "in design", room="design")
    assert (await reply(sender, "ack"))["room"] == "design"
    for socket in (sender, watcher):
        assert (await reply(socket, "message"))["body"] == "in design"
    await watcher.send_json_to({"type": "leave", "room": "design"})
    assert (await reply(watcher, "left"))["room"] == "design"
    await watcher.send_json_to({"type": "ping", "ts": 1})
    assert (await reply(watcher, "pong"))["last_seq"] == {"lobby": 3}

    # Redis back: one probe per interval finds it; then limits, publishing and the
    # room's group are Redis' again.
    private_redis.start()
    breaker_clock.now += 1
    await post(sender, "as Redis comes back")  # probes in the background
    assert (await reply(sender, "ack"))["client_id"] == "as Redis comes back"
    await redis_breaker.probing
    assert not redis_breaker.down
    await post(sender, "after")
    # Published: live once the layer has subscribed again (else recovered by seq).
    assert (await reply(sender, "ack", "message"))["client_id"] == "after"
    store = redis.Redis.from_url(private_redis.url)
    limited = f"{django_settings.REDIS_KEY_PREFIX}:rl:message:{alice.pk}"
    assert store.zcard(limited) == 1  # counted in Redis, from scratch
    store.close()
    deadline = asyncio.get_running_loop().time() + 3
    while broadcast.hub_sizes()["hubUnsubscribed"]:
        assert asyncio.get_running_loop().time() < deadline, "design not subscribed"
        await asyncio.sleep(0.05)
    assert broadcast.hub_sizes()["hubSubscribed"] == 2
    for socket in (sender, watcher):
        await socket.disconnect()


async def test_in_the_server_a_publish_lost_with_redis_still_reaches_this_process(
    alice, bob, private_redis, breaker_clock
):
    # The server does not wait for a publish's reply; one that fails after it was
    # sent is routed here when the failure comes, as a publish waited for is.
    runtime().serving = True
    sender, watcher = await joined(alice), await joined(bob)
    private_redis.kill()
    assert not redis_breaker.down

    await broadcast.message_created({"room": "lobby", "id": 1, "body": "sent blind"})

    for socket in (sender, watcher):
        assert (await reply(socket, "message"))["body"] == "sent blind"
    assert redis_breaker.down
    for socket in (sender, watcher):
        await socket.disconnect()


async def test_with_redis_gone_tickets_are_issued_here_and_redeemed_here_once(
    alice, private_redis, breaker_clock
):
    before = await sync_to_async(ticket_issue)(alice.pk)  # in Redis
    # Killed before this loop's first socket: as for a process started meanwhile.
    private_redis.kill()
    local = await sync_to_async(ticket_issue)(alice.pk)
    assert local.startswith(LOCAL_MARK) and redis_breaker.down
    socket, hello = await connect(ticket=local)
    assert '"hello"' in hello["text"]  # presence pauses: registered later
    await socket.send_json_to({"type": "join", "room": "lobby"})
    assert (await reply(socket, "joined"))["room"] == "lobby"
    # Cannot tell: Redis' ticket, or one used (it may be another process's): 1013.
    for ticket in (before, local):
        refused, close = await connect(ticket=ticket)
        assert close == {"type": "websocket.close", "code": 1013}
    await socket.disconnect()


def test_with_redis_gone_the_api_still_posts_and_limits_per_process(
    alice, lobby, redis_server, settings, set_rate
):
    settings.REDIS_URL = redis_server.url  # limits and presence (the layer stays)
    set_rate("message", 2)
    api = APIClient()
    api.credentials(HTTP_AUTHORIZATION=f"Token {Token.objects.create(user=alice).key}")
    assert api.get("/api/rooms/").status_code == 200
    redis_server.kill()
    for n in range(2):
        response = api.post(
            "/api/rooms/lobby/messages/", {"body": f"rest {n}"}, format="json"
        )
        assert response.status_code == 201, response.json()
    refused = api.post("/api/rooms/lobby/messages/", {"body": "rest 2"}, format="json")
    assert refused.status_code == 429 and refused.json()["code"] == "rate_limited"
    rooms = api.get("/api/rooms/")
    assert rooms.status_code == 200
    assert [r["online_count"] for r in rooms.json()["results"]] == [0]
    presence = api.get("/api/rooms/lobby/presence/")
    assert presence.status_code == 503 and presence.json()["code"] == "unavailable"
    assert Message.objects.count() == 2

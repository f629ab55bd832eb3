"""Private rooms, DMs, members, read state and mentions, as a user sees them."""

import asyncio

import pytest
from asgiref.sync import async_to_sync, sync_to_async
from django.db import IntegrityError, connection, transaction
from django.test.utils import CaptureQueriesContext
from rest_framework.test import APIClient

from chat import services
from chat.models import Membership, Message, MessageMention, Room
from chat.tests.test_consumers import joined, send_message, signed_in

pytestmark = pytest.mark.django_db(transaction=True)


def client_for(user):
    client = APIClient()
    client.force_authenticate(user)
    return client


def post(user, room, body):
    result = async_to_sync(services.message_send)(user=user, room=room, body=body)
    return result.message


@pytest.fixture
def carol(make_user):
    return make_user("carol")


@pytest.fixture
def team(alice, bob):
    """A private room of alice's, bob added."""
    room = services.room_create(
        user=alice, name="Team", slug="team", visibility="private"
    )
    services.room_member_add(actor=alice, room=room, username="bob")
    return room


def room_object(user, slug):
    return client_for(user).get(f"/api/rooms/{slug}/").json()


# Private rooms and members


def test_a_private_rooms_creator_is_its_first_member(alice):
    response = client_for(alice).post(
        "/api/rooms/", {"name": "Ops", "visibility": "private"}, format="json"
    )
    assert response.status_code == 201
    room = response.json()
    assert (room["slug"], room["visibility"], room["kind"]) == (
        "ops",
        "private",
        "room",
    )
    assert (room["member_count"], room["last_read_seq"], room["unread"]) == (1, 0, 0)
    members = client_for(alice).get("/api/rooms/ops/members/").json()
    assert members == {"results": [{"username": "alice"}]}


@pytest.mark.parametrize(
    "visibility, picked",
    [("private", False), ("private", True), ("public", False)],
    ids=["private-by-the-admin", "private-for-alice", "public"],
)
def test_a_room_added_in_the_admin_is_created_as_over_the_api(
    client, django_user_model, alice, visibility, picked
):
    admin = django_user_model.objects.create_superuser("root", password="Root-Pass-1")
    client.force_login(admin)
    response = client.post(
        "/admin/chat/room/add/",
        {
            "slug": "ops",
            "name": "Ops",
            "visibility": visibility,
            "created_by": alice.pk if picked else "",
        },
    )
    assert response.status_code == 302, response.content[:2000]
    room = Room.objects.get(slug="ops")
    creator = alice if picked else admin
    assert (room.name, room.visibility, room.created_by) == ("Ops", visibility, creator)
    members = Membership.objects.filter(room=room).values_list("user__username")
    expected = [(creator.username,)] if visibility == "private" else []
    assert list(members) == expected
    assert client_for(creator).get("/api/rooms/ops/").status_code == 200
    assert client.get(f"/admin/chat/room/{room.pk}/change/").status_code == 200


def test_rooms_are_public_unless_asked_and_visibility_is_checked(alice):
    client = client_for(alice)
    room = client.post("/api/rooms/", {"name": "Open"}, format="json").json()
    assert (room["visibility"], room["kind"], room["last_read_seq"]) == (
        "public",
        "room",
        None,  # not a member yet: no read state
    )
    bad = client.post(
        "/api/rooms/", {"name": "X", "visibility": "secret"}, format="json"
    )
    assert bad.status_code == 400 and "visibility" in bad.json()


def test_members_add_people_and_unknown_users_are_refused(team, alice, bob, carol):
    client = client_for(bob)  # a member, not the creator

    def add(username):
        return client.post(
            "/api/rooms/team/members/", {"username": username}, format="json"
        )

    added = add("carol")
    assert (added.status_code, added.json()) == (201, {"username": "carol"})
    again = add("carol")
    assert again.status_code == 200
    unknown = add("zed")
    assert unknown.status_code == 400 and "username" in unknown.json()
    assert room_object(carol, "team")["slug"] == "team"
    # Only the creator (or staff) removes someone else; anyone removes themselves.
    assert client.delete("/api/rooms/team/members/carol/").status_code == 403
    assert client_for(alice).delete("/api/rooms/team/members/carol/").status_code == 204
    assert client_for(carol).get("/api/rooms/team/").status_code == 404
    assert client.delete("/api/rooms/team/members/bob/").status_code == 204
    assert client.get("/api/rooms/team/").status_code == 404


async def test_a_removed_members_sockets_lose_the_room_at_once(team, alice, bob):
    bob_first = await joined(bob, "team")
    bob_second = await signed_in(bob)  # not in the room: told all the same
    alice_socket = await joined(alice, "team")
    response = await sync_to_async(client_for(alice).delete)(
        "/api/rooms/team/members/bob/"
    )
    assert response.status_code == 204
    removed = {"type": "room_removed", "room": "team"}
    assert await bob_first.receive_json_from() == removed
    assert await bob_second.receive_json_from() == removed
    # Afterwards nothing of the room reaches bob's socket, and it may not use it.
    typing = {"type": "typing", "room": "team", "state": "start"}
    await alice_socket.send_json_to(typing)
    await send_message(alice_socket, "after", room="team")
    assert (await alice_socket.receive_json_from())["type"] in ("ack", "message")
    assert await bob_first.receive_nothing(0.3)
    for frame in [
        {"type": "message", "room": "team", "body": "let me in"},
        {"type": "typing", "room": "team", "state": "start"},
        {"type": "join", "room": "team"},
    ]:
        await bob_first.send_json_to(frame)
        assert (await bob_first.receive_json_from())["code"] == "not_found"
    assert not await sync_to_async(Message.objects.filter(body="let me in").exists)()
    for socket in (bob_first, bob_second, alice_socket):
        await socket.disconnect()


async def test_a_removed_member_leaves_the_rooms_presence(
    team, alice, bob, presence_conf
):
    presence_conf(PRESENCE_EVENT_INTERVAL=0)  # member events not coalesced
    bob_socket = await joined(bob, "team")
    await sync_to_async(services.room_member_remove)(
        actor=alice, room=team, username="bob"
    )
    assert (await bob_socket.receive_json_from())["type"] == "room_removed"
    users = await sync_to_async(client_for(alice).get)("/api/rooms/team/presence/")
    assert [u["username"] for u in users.json()["users"]] == []
    await bob_socket.disconnect()


# Direct messages


def test_a_dm_is_opened_once_per_set_of_people(alice, bob, carol):
    opened = client_for(alice).post("/api/dms/", {"users": ["bob"]}, format="json")
    assert opened.status_code == 201
    dm = opened.json()
    assert dm["slug"].startswith("dm-")
    assert (dm["kind"], dm["visibility"], dm["name"]) == ("direct", "private", "bob")
    again = client_for(bob).post("/api/dms/", {"users": ["alice"]}, format="json")
    assert again.status_code == 200
    assert (again.json()["slug"], again.json()["name"]) == (dm["slug"], "alice")
    three = client_for(alice).post(
        "/api/dms/", {"users": ["carol", "bob", "alice"]}, format="json"
    )
    assert three.status_code == 201 and three.json()["slug"] != dm["slug"]
    assert three.json()["name"] == "bob, carol"
    assert Room.objects.filter(kind="direct").count() == 2


async def test_the_other_members_sockets_hear_of_a_new_dm(alice, bob, carol):
    bob_socket = await signed_in(bob)
    carol_socket = await signed_in(carol)
    room, created = await sync_to_async(services.dm_open)(user=alice, usernames=["bob"])
    assert created
    assert await bob_socket.receive_json_from() == {
        "type": "room_added",
        "room": room.slug,
    }
    await bob_socket.send_json_to({"type": "join", "room": room.slug})
    assert (await bob_socket.receive_json_from())["type"] == "joined"
    assert await carol_socket.receive_nothing(0.2)
    for socket in (bob_socket, carol_socket):
        await socket.disconnect()


@pytest.mark.parametrize(
    "users",
    [[], ["alice"], ["zed"], "bob", [1], [f"u{n}" for n in range(8)]],
)
def test_a_dm_needs_one_to_seven_existing_others(alice, bob, users):
    response = client_for(alice).post("/api/dms/", {"users": users}, format="json")
    assert response.status_code == 400 and "users" in response.json()


def test_no_one_is_added_to_a_dm(alice, bob, carol):
    slug = client_for(alice).post("/api/dms/", {"users": ["bob"]}, format="json")
    slug = slug.json()["slug"]
    response = client_for(alice).post(
        f"/api/rooms/{slug}/members/", {"username": "carol"}, format="json"
    )
    assert (response.status_code, response.json()["code"]) == (403, "forbidden")
    assert Membership.objects.filter(room__slug=slug).count() == 2


def test_the_dm_key_is_unique_so_concurrent_opens_make_one(alice, bob, monkeypatch):
    room, created = services.dm_open(user=alice, usernames=["bob"])
    with pytest.raises(IntegrityError), transaction.atomic():
        Room.objects.create(slug="dm-copy", name="x", dm_key=room.dm_key)
    # A racing open that found nothing yet loses on the key and gets the winner's.
    real_filter = Room.objects.filter
    calls = []

    def blind_first(**kwargs):
        calls.append(kwargs)
        rows = real_filter(**kwargs)
        return rows.none() if len(calls) == 1 else rows

    monkeypatch.setattr(Room.objects, "filter", blind_first)
    again, created_again = services.dm_open(user=bob, usernames=["alice"])
    assert (again.pk, created, created_again) == (room.pk, True, False)


# Read state, unread and mentions


def test_unread_and_mentions_count_live_messages_by_others(team, alice, bob):
    post(bob, team, "one")
    mention = post(bob, team, "hey @ALICE, look")
    gone = post(bob, team, "@alice this goes")
    post(alice, team, "mine, @alice")
    post(bob, team, "mail alice@example.com")  # an address, not a mention
    services.message_delete(user=bob, room=team, message_id=gone["id"])
    assert mention["mentions"] == ["alice"]
    assert "mentions" not in post(bob, team, "no one")
    state = room_object(alice, "team")
    assert (state["last_read_seq"], state["unread"], state["mentions"]) == (0, 4, 1)
    history = client_for(alice).get("/api/rooms/team/messages/").json()["results"]
    assert [m.get("mentions") for m in history][:3] == [None, ["alice"], None]
    read = client_for(alice).post(
        "/api/rooms/team/read/", {"seq": mention["seq"]}, format="json"
    )
    assert read.status_code == 200
    assert read.json() == {
        "room": "team",
        "last_read_seq": 2,
        "unread": 2,  # after seq 2: bob's "mail" and "no one"
        "mentions": 0,
        "last_seq": 6,  # what the counts cover
    }


def test_only_people_who_may_see_the_room_are_mentioned(team, alice, bob, carol):
    message = post(alice, team, "@bob and @carol")
    assert message["mentions"] == ["bob"]
    assert list(MessageMention.objects.values_list("user__username", flat=True)) == [
        "bob"
    ]
    assert room_object(bob, "team")["mentions"] == 1


def test_read_moves_forward_only_and_stops_at_the_last_seq(team, alice, bob):
    for n in range(3):
        post(bob, team, f"m{n}")
    client = client_for(alice)
    assert (
        client.post("/api/rooms/team/read/", {"seq": 99}, format="json").json()[
            "last_read_seq"
        ]
        == 3
    )
    back = client.post("/api/rooms/team/read/", {"seq": 1}, format="json").json()
    assert (back["last_read_seq"], back["unread"]) == (3, 0)
    bad = client.post("/api/rooms/team/read/", {"seq": -1}, format="json")
    assert bad.status_code == 400


async def test_read_on_one_socket_reaches_the_users_other_sockets(team, alice, bob):
    for n in range(3):
        await sync_to_async(post)(bob, team, f"m{n}")
    first = await joined(alice, "team")
    second = await signed_in(alice)  # another tab, not even in the room
    await first.send_json_to({"type": "read", "room": "team", "seq": 2})
    state = {
        "type": "read",
        "room": "team",
        "last_read_seq": 2,
        "unread": 1,
        "mentions": 0,
        "last_seq": 3,
    }
    assert await first.receive_json_from() == state
    assert await second.receive_json_from() == state
    # Not moved (back): the sender alone hears the state as it is.
    await first.send_json_to({"type": "read", "room": "team", "seq": 1})
    assert await first.receive_json_from() == state
    assert await second.receive_nothing(0.2)
    await first.send_json_to({"type": "read", "room": "team", "seq": "2"})
    assert (await first.receive_json_from())["code"] == "invalid"
    for socket in (first, second):
        await socket.disconnect()


async def test_a_socket_message_with_a_mention_is_stored_with_it(team, alice, bob):
    socket = await joined(alice, "team")
    await send_message(socket, "ping @bob", client_id="m1", room="team")
    frames = {}
    for _ in range(2):
        frame = await socket.receive_json_from()
        frames[frame["type"]] = frame
    assert frames["message"]["mentions"] == ["bob"]
    stored = await sync_to_async(Message.objects.get)(pk=frames["ack"]["id"])
    assert stored.mentions == ["bob"]
    rows = MessageMention.objects.filter(message=stored)
    assert await sync_to_async(rows.count)() == 1
    await socket.disconnect()


def test_mine_lists_the_users_own_rooms_with_what_their_counts_cover(
    lobby, team, alice, bob, carol
):
    services.room_create(user=carol, name="Open", slug="open")
    services.room_create(user=carol, name="Hidden", slug="hidden", visibility="private")
    dm, _ = services.dm_open(user=bob, usernames=["alice"])
    post(bob, team, "one")
    post(bob, team, "two @alice")
    everything = client_for(alice).get("/api/rooms/").json()["results"]
    assert [r["slug"] for r in everything] == sorted([dm.slug, "lobby", "open", "team"])
    mine = client_for(alice).get("/api/rooms/?mine=1").json()
    assert mine["count"] == 2
    by_slug = {room["slug"]: room for room in mine["results"]}
    assert set(by_slug) == {dm.slug, "team"}  # not the public rooms she never joined
    team_room = by_slug["team"]
    assert (team_room["last_seq"], team_room["unread"], team_room["mentions"]) == (
        2,
        2,
        1,
    )
    assert team_room["created_by"] == "alice"
    assert (by_slug[dm.slug]["name"], by_slug[dm.slug]["last_seq"]) == ("bob", 0)


def edit(user, room, message, body):
    """Edit over REST (the edited message object)."""
    response = client_for(user).patch(
        f"/api/rooms/{room.slug}/messages/{message['id']}/",
        {"body": body},
        format="json",
    )
    assert response.status_code == 200, response.content
    return response.json()


def mentioned(message):
    return sorted(
        MessageMention.objects.filter(message_id=message["id"]).values_list(
            "user__username", flat=True
        )
    )


def mention_counts(*users):
    return [room_object(user, "team")["mentions"] for user in users]


def test_mentions_follow_an_edit(team, alice, bob, carol):
    services.room_member_add(actor=alice, room=team, username="carol")
    message = post(bob, team, "hello")
    assert mention_counts(alice, carol) == [0, 0]

    added = edit(bob, team, message, "hello @alice")
    assert added["mentions"] == ["alice"] and mentioned(message) == ["alice"]
    assert mention_counts(alice, carol) == [1, 0]

    moved = edit(bob, team, message, "hello @carol and @CAROL")
    assert moved["mentions"] == ["carol"] and mentioned(message) == ["carol"]
    assert mention_counts(alice, carol) == [0, 1]

    both = edit(bob, team, message, "@alice, @carol")
    assert both["mentions"] == ["alice", "carol"]
    assert mentioned(message) == ["alice", "carol"]
    assert mention_counts(alice, carol) == [1, 1]

    gone = edit(bob, team, message, "hello all")
    assert "mentions" not in gone and mentioned(message) == []
    assert Message.objects.get(pk=message["id"]).mentions is None
    assert mention_counts(alice, carol) == [0, 0]


def test_a_mention_added_by_an_edit_does_not_count_once_read_past(team, alice, bob):
    message = post(bob, team, "hello")
    later = post(bob, team, "later")
    read = {"seq": later["seq"]}
    client_for(alice).post("/api/rooms/team/read/", read, format="json")
    assert edit(bob, team, message, "hello @alice")["mentions"] == ["alice"]
    assert mention_counts(alice) == [0]


async def test_message_edited_carries_the_new_mentions(team, alice, bob):
    message = await sync_to_async(post)(alice, team, "hi @bob")
    assert await sync_to_async(mention_counts)(alice, bob) == [0, 1]
    listener = await joined(bob, "team")
    author = await joined(alice, "team")
    await author.send_json_to(
        {"type": "edit", "room": "team", "id": message["id"], "body": "hi @alice"}
    )
    for socket in (author, listener):
        event = await socket.receive_json_from()
        assert event["type"] == "message_edited"
        assert event["message"]["mentions"] == ["alice"]
    # Her own message: no mention of herself counts, and bob's is gone.
    assert await sync_to_async(mention_counts)(alice, bob) == [0, 0]
    await author.send_json_to(
        {"type": "edit", "room": "team", "id": message["id"], "body": "hi all"}
    )
    for socket in (author, listener):
        event = await socket.receive_json_from()
        assert "mentions" not in event["message"]
    for socket in (author, listener):
        await socket.disconnect()


def test_the_room_list_costs_the_same_queries_for_any_number_of_rooms(alice, bob):
    def list_queries():
        with CaptureQueriesContext(connection) as queries:
            response = client_for(alice).get("/api/rooms/")
        assert response.status_code == 200
        return len(queries), response.json()["results"]

    def make_rooms(first, count):
        for n in range(first, first + count):
            room = services.room_create(
                user=alice, name=f"R{n}", slug=f"r{n}", visibility="private"
            )
            services.room_member_add(actor=alice, room=room, username="bob")
            post(bob, room, f"hi @alice {n}")
        services.dm_open(user=alice, usernames=["bob"]) if first == 0 else None

    make_rooms(0, 2)
    few, listed = list_queries()
    make_rooms(2, 12)
    many, listed = list_queries()
    assert few == many
    assert {(r["unread"], r["mentions"]) for r in listed if r["kind"] == "room"} == {
        (1, 1)
    }


async def test_the_quick_insert_stores_a_private_rooms_posts_by_members_only(
    team, alice, bob, carol, lobby
):
    posts = [(bob, team, "member"), (carol, team, "outsider"), (carol, lobby, "public")]
    results = await asyncio.gather(
        *(
            services._message_post_quick(user, room, body, None)
            for user, room, body in posts
        )
    )
    stored = [result and result.message["body"] for result in results]
    assert stored == ["member", None, "public"]
    team_bodies = Message.objects.filter(room=team).values_list("body", flat=True)
    assert await sync_to_async(list)(team_bodies) == ["member"]

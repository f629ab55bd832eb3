"""Who may see a room, on every path: REST and socket × role × kind of room.

The roles: an outsider, a member, a removed member (a DM's: one who left), staff, a
moderator (neither staff nor a member, but with the permission to delete messages).
A room someone may not see answers exactly like a slug that was never created.
"""

import pytest
from asgiref.sync import sync_to_async
from django.contrib.auth.models import Permission
from rest_framework.test import APIClient

from chat import services
from chat.models import Message, Room
from chat.tests.test_consumers import signed_in

pytestmark = pytest.mark.django_db(transaction=True)

ROLES = ["outsider", "member", "removed", "staff", "moderator"]
KINDS = ["public", "private", "dm"]
# Who may see each kind of room; everyone else gets not_found.
SEES = {
    "public": {"outsider", "member", "removed", "staff", "moderator"},
    "private": {"member", "staff"},
    "dm": {"member"},
}
MATRIX = [(kind, role) for kind in KINDS for role in ROLES]


@pytest.fixture
def world(django_user_model):
    """Three rooms by `owner`, with `member`, `peer` and a `removed` member each."""
    users = {
        name: django_user_model.objects.create_user(name, password="x-Horse-9")
        for name in ["owner", "member", "peer", "removed", "outsider", "extra"]
    }
    users["staff"] = django_user_model.objects.create_user(
        "staff", password="x-Horse-9", is_staff=True
    )
    users["moderator"] = django_user_model.objects.create_user(
        "moderator", password="x-Horse-9"
    )
    users["moderator"].user_permissions.add(
        Permission.objects.get(codename="delete_message")
    )
    owner = users["owner"]
    public = services.room_create(user=owner, name="Pub", slug="pub")
    private = services.room_create(
        user=owner, name="Priv", slug="priv", visibility="private"
    )
    for room in (public, private):
        for name in ("member", "peer", "removed"):
            if room.is_public:
                services.room_join(user=users[name], room=room)
            else:
                services.room_member_add(actor=owner, room=room, username=name)
        services.room_member_remove(actor=owner, room=room, username="removed")
    dm, _ = services.dm_open(user=owner, usernames=["member", "peer", "removed"])
    services.membership_end(user=users["removed"], room=dm)  # a DM is left, never cut
    rooms = {"public": public, "private": private, "dm": dm}
    messages = {
        kind: Message.objects.create(room=room, seq=1, user=owner, body="first")
        for kind, room in rooms.items()
    }
    Room.objects.update(last_seq=1)
    return {"users": users, "rooms": rooms, "messages": messages}


def client_for(user):
    client = APIClient()
    client.force_authenticate(user)
    return client


def rest_calls(slug, message_id):
    """(name, method, path, body) of every REST path that names a room."""
    base = f"/api/rooms/{slug}"
    return [
        ("detail", "get", f"{base}/", None),
        ("history", "get", f"{base}/messages/", None),
        ("presence", "get", f"{base}/presence/", None),
        ("members", "get", f"{base}/members/", None),
        ("add", "post", f"{base}/members/", {"username": "extra"}),
        ("remove", "delete", f"{base}/members/peer/", None),
        ("read", "post", f"{base}/read/", {"seq": 1}),
        ("delete", "delete", f"{base}/messages/{message_id}/", None),
        # Posting makes the poster a member: after the paths that need one.
        ("post", "post", f"{base}/messages/", {"body": "hello"}),
        ("leave", "delete", f"{base}/membership/", None),
    ]


def rest_expected(name, kind, role):
    """The status a visible room's path answers `role` with."""
    member = role == "member"
    return {
        "post": 201,
        "add": 403 if kind == "dm" else (201 if member or role == "staff" else 403),
        "remove": 204 if role == "staff" and kind != "dm" else 403,
        "read": 200 if member else 403,
        "delete": 204 if role == "moderator" else 403,  # someone else's message
        "leave": 204,
    }.get(name, 200)


@pytest.mark.parametrize("kind, role", MATRIX)
def test_rest_paths(world, kind, role):
    room = world["rooms"][kind]
    client = client_for(world["users"][role])
    visible = role in SEES[kind]
    never = {
        name: getattr(client, method)(path, body, format="json")
        for name, method, path, body in rest_calls("never-made", 1)
    }
    calls = rest_calls(room.slug, world["messages"][kind].id)
    for name, method, path, body in calls:
        response = getattr(client, method)(path, body, format="json")
        if visible:
            assert response.status_code == rest_expected(name, kind, role), name
        else:
            assert response.status_code == 404, name
            # Exactly what a slug never created gets, but for the slug itself.
            expected = never[name].json()
            assert response.json() == {
                key: value.replace("never-made", room.slug)
                for key, value in expected.items()
            }, name
    listed = [r["slug"] for r in client.get("/api/rooms/").json()["results"]]
    # The room list: visible rooms; after "leave" a private room is gone too.
    still_visible = kind == "public" or (role == "staff" and kind == "private")
    assert (room.slug in listed) == still_visible
    assert Message.objects.filter(room=room, body="hello").exists() == visible


@pytest.mark.parametrize("kind, role", MATRIX)
async def test_socket_paths(world, kind, role):
    room = world["rooms"][kind]
    message = world["messages"][kind]
    socket = await signed_in(world["users"][role])
    visible = role in SEES[kind]

    async def reply_to(frame):
        await socket.send_json_to({"room": room.slug, **frame})
        return await socket.receive_json_from()

    # No `since`: on PostgreSQL the join is the one statement on the loop.
    joined = await reply_to({"type": "join"})
    if not visible:
        assert joined["code"] == "not_found"
        for frame in [
            {"type": "message", "body": "hello", "client_id": "c1"},
            {"type": "typing", "state": "start"},
            {"type": "delete", "id": message.id},
            {"type": "read", "seq": 1},
        ]:
            error = await reply_to(frame)
            assert (error["type"], error["code"]) == ("error", "not_found"), frame
            assert error["detail"] == f"No room {room.slug!r}."
        assert await socket.receive_nothing()
        assert not await sync_to_async(
            Message.objects.filter(room=room, body="hello").exists
        )()
    else:
        assert (joined["type"], joined["last_seq"]) == ("joined", 1)
        await socket.send_json_to(
            {"type": "message", "room": room.slug, "body": "hello", "client_id": "c1"}
        )
        frames = [await socket.receive_json_from() for _ in range(2)]
        assert {f["type"] for f in frames} == {"ack", "message"}
        typing = {"type": "typing", "room": room.slug, "state": "start"}
        await socket.send_json_to(typing)
        deleted = await reply_to({"type": "delete", "id": message.id})
        if role == "moderator":
            assert (deleted["type"], deleted["id"]) == ("message_deleted", message.id)
        else:  # not the author's, but the room exists
            assert (deleted["type"], deleted["code"]) == ("error", "forbidden")
        read = await reply_to({"type": "read", "seq": 1})
        assert (read["type"], read["last_read_seq"]) == ("read", 1)
    await socket.disconnect()


async def test_a_private_room_is_not_found_like_a_slug_never_created(world):
    socket = await signed_in(world["users"]["outsider"])
    replies = []
    for slug in ["priv", "never-made"]:
        await socket.send_json_to({"type": "join", "room": slug})
        reply = await socket.receive_json_from()
        replies.append({**reply, "detail": reply["detail"].replace(slug, "X")})
    assert replies[0] == replies[1]
    await socket.disconnect()


def test_the_room_list_holds_public_rooms_and_the_users_own(world):
    listed = client_for(world["users"]["member"]).get("/api/rooms/").json()["results"]
    by_slug = {room["slug"]: room for room in listed}
    dm = world["rooms"]["dm"]
    assert {"pub", "priv", dm.slug} <= set(by_slug)
    outsider = client_for(world["users"]["outsider"]).get("/api/rooms/").json()
    assert {"priv", dm.slug}.isdisjoint(r["slug"] for r in outsider["results"])
    assert by_slug["priv"]["visibility"] == "private"
    assert by_slug["priv"]["kind"] == "room"
    assert by_slug[dm.slug]["kind"] == "direct"
    assert by_slug[dm.slug]["visibility"] == "private"
    assert by_slug[dm.slug]["name"] == "owner, peer"  # the other members
    assert by_slug["pub"]["visibility"] == "public"

import pytest
from rest_framework.authtoken.models import Token
from rest_framework.test import APIClient

from chat.models import Membership, Message, Room

# Posting goes through database_sync_to_async, which closes a connection that is
# inside a test transaction: these tests commit for real.
pytestmark = pytest.mark.django_db(transaction=True)

PASSWORD = "Correct-Horse-9"


@pytest.fixture
def api():
    return APIClient()


@pytest.fixture
def alice_api(alice):
    client = APIClient()
    client.credentials(HTTP_AUTHORIZATION=f"Token {Token.objects.create(user=alice).key}")
    return client


def register(api, username="carol", password=PASSWORD):
    return api.post(
        "/api/auth/register/", {"username": username, "password": password}, format="json"
    )


def test_register_returns_a_working_token(api):
    response = register(api)
    assert response.status_code == 201
    api.credentials(HTTP_AUTHORIZATION=f"Token {response.json()['token']}")
    assert api.get("/api/rooms/").status_code == 200


def test_register_refuses_a_taken_username(api, alice):
    response = register(api, "alice")
    assert response.status_code == 400
    assert "username" in response.json()


@pytest.mark.parametrize(
    "username", ["", "has space", "x" * 151, "nul\x00", "rtl\u202eevil", "semi;colon"]
)
def test_register_refuses_malformed_usernames(api, username):
    response = register(api, username)
    assert response.status_code == 400
    assert "username" in response.json()


def test_register_accepts_the_contract_characters(api):
    assert register(api, "a.b@c+d-e_f9").status_code == 201


def test_register_refuses_a_weak_password(api):
    response = register(api, "dave", "123")
    assert response.status_code == 400
    assert "password" in response.json()


def test_token_logs_in_and_refuses_bad_credentials(api, alice):
    good = api.post("/api/auth/token/", {"username": "alice", "password": PASSWORD}, format="json")
    assert good.status_code == 200 and good.json()["token"]
    bad = api.post("/api/auth/token/", {"username": "alice", "password": "nope"}, format="json")
    assert bad.status_code == 400


def test_ws_ticket_needs_authentication(api):
    assert api.post("/api/ws-ticket/").status_code == 401


def test_ws_ticket_is_issued_with_its_lifetime(alice_api):
    response = alice_api.post("/api/ws-ticket/")
    assert response.status_code == 200
    body = response.json()
    assert body["expires_in"] == 30 and len(body["ticket"]) >= 32


def test_rooms_list_shape(alice_api, alice, lobby):
    Membership.objects.create(user=alice, room=lobby)
    response = alice_api.get("/api/rooms/")
    assert response.status_code == 200
    (room,) = response.json()["results"]
    assert room["slug"] == "lobby" and room["name"] == "Lobby"
    assert room["member_count"] == 1 and room["online_count"] == 0
    assert room["created_at"].endswith("Z")


def test_create_room_with_and_without_slug(alice_api):
    made = alice_api.post("/api/rooms/", {"name": "Design Crit"}, format="json")
    assert made.status_code == 201
    assert made.json()["slug"] == "design-crit" and made.json()["member_count"] == 0
    explicit = alice_api.post("/api/rooms/", {"name": "Ops", "slug": "ops-1"}, format="json")
    assert explicit.status_code == 201 and explicit.json()["slug"] == "ops-1"


def test_create_room_refuses_a_taken_or_bad_slug_and_a_missing_name(alice_api, lobby):
    taken = alice_api.post("/api/rooms/", {"name": "L", "slug": "lobby"}, format="json")
    assert taken.status_code == 400 and "slug" in taken.json()
    bad = alice_api.post("/api/rooms/", {"name": "L", "slug": "Bad Slug"}, format="json")
    assert bad.status_code == 400 and "slug" in bad.json()
    nameless = alice_api.post("/api/rooms/", {"slug": "x"}, format="json")
    assert nameless.status_code == 400 and "name" in nameless.json()


def test_room_detail_and_unknown_room(alice_api, lobby):
    assert alice_api.get("/api/rooms/lobby/").json()["slug"] == "lobby"
    assert alice_api.get("/api/rooms/nowhere/").status_code == 404
    assert alice_api.get("/api/rooms/nowhere/messages/").status_code == 404


@pytest.fixture
def history(alice, lobby):
    Message.objects.bulk_create(
        [Message(room=lobby, seq=i, user=alice, body=f"m{i}") for i in range(1, 11)]
    )
    Room.objects.filter(pk=lobby.pk).update(last_seq=10)


def seqs(response):
    assert response.status_code == 200, response.content
    body = response.json()
    return [m["seq"] for m in body["results"]], body["has_more"]


def test_history_without_cursor_is_the_newest_oldest_first(alice_api, history):
    assert seqs(alice_api.get("/api/rooms/lobby/messages/?limit=3")) == ([8, 9, 10], True)
    assert seqs(alice_api.get("/api/rooms/lobby/messages/")) == (list(range(1, 11)), False)


def test_history_after_and_before(alice_api, history):
    assert seqs(alice_api.get("/api/rooms/lobby/messages/?after=4&limit=3")) == ([5, 6, 7], True)
    assert seqs(alice_api.get("/api/rooms/lobby/messages/?after=7&limit=3")) == ([8, 9, 10], False)
    assert seqs(alice_api.get("/api/rooms/lobby/messages/?before=5&limit=3")) == ([2, 3, 4], True)
    assert seqs(alice_api.get("/api/rooms/lobby/messages/?before=4&limit=3")) == ([1, 2, 3], False)
    assert seqs(alice_api.get("/api/rooms/lobby/messages/?after=10")) == ([], False)


def test_history_limit_is_capped_at_200(alice_api, alice, lobby):
    Message.objects.bulk_create(
        [Message(room=lobby, seq=i, user=alice, body="x") for i in range(1, 251)]
    )
    results, has_more = seqs(alice_api.get("/api/rooms/lobby/messages/?limit=500"))
    assert len(results) == 200 and has_more


@pytest.mark.parametrize("query", ["limit=abc", "limit=0", "after=-1", "before=x"])
def test_history_refuses_bad_cursors(alice_api, history, query):
    response = alice_api.get(f"/api/rooms/lobby/messages/?{query}")
    assert response.status_code == 400
    assert query.split("=")[0] in response.json()


def test_history_shows_deleted_messages_as_tombstones(alice_api, history):
    from django.utils import timezone

    Message.objects.filter(seq=5).update(deleted_at=timezone.now())
    results = alice_api.get("/api/rooms/lobby/messages/?after=4&limit=1").json()["results"]
    assert results[0]["deleted"] is True and results[0]["body"] == "" and results[0]["seq"] == 5


def test_post_message_stores_and_makes_a_member(alice_api, alice, lobby):
    response = alice_api.post(
        "/api/rooms/lobby/messages/", {"body": " hi ", "client_id": "b-1"}, format="json"
    )
    assert response.status_code == 201
    message = response.json()
    assert (message["seq"], message["body"], message["user"], message["client_id"]) == (
        1,
        "hi",
        "alice",
        "b-1",
    )
    assert Membership.objects.filter(user=alice, room=lobby).exists()


def test_post_message_replay_returns_200_with_the_original(alice_api, lobby):
    first = alice_api.post("/api/rooms/lobby/messages/", {"body": "a", "client_id": "k"}, format="json")
    again = alice_api.post("/api/rooms/lobby/messages/", {"body": "a", "client_id": "k"}, format="json")
    assert again.status_code == 200 and again.json() == first.json()
    assert Message.objects.count() == 1


@pytest.mark.parametrize("payload", [{}, {"body": ""}, {"body": "x" * 4001}, {"body": 12}])
def test_post_message_refuses_bad_bodies_with_a_field_error(alice_api, lobby, payload):
    response = alice_api.post("/api/rooms/lobby/messages/", payload, format="json")
    assert response.status_code == 400
    assert "body" in response.json()
    assert not Message.objects.exists()


def test_post_message_to_a_locked_room_is_403_and_unknown_is_404(alice_api, lobby):
    Room.objects.filter(pk=lobby.pk).update(is_locked=True)
    locked = alice_api.post("/api/rooms/lobby/messages/", {"body": "x"}, format="json")
    assert locked.status_code == 403 and locked.json()["code"] == "forbidden"
    missing = alice_api.post("/api/rooms/nowhere/messages/", {"body": "x"}, format="json")
    assert missing.status_code == 404
    assert not Message.objects.exists()


def test_leaving_a_room_ends_the_membership(alice_api, alice, lobby):
    Membership.objects.create(user=alice, room=lobby)
    assert alice_api.delete("/api/rooms/lobby/membership/").status_code == 204
    assert not Membership.objects.filter(user=alice).exists()


def test_the_api_needs_authentication(api, lobby):
    assert api.get("/api/rooms/").status_code == 401
    assert api.post("/api/rooms/lobby/messages/", {"body": "x"}, format="json").status_code == 401


def test_session_posts_need_a_csrf_token(alice, lobby):
    client = APIClient(enforce_csrf_checks=True)
    client.force_login(alice)
    response = client.post("/api/rooms/lobby/messages/", {"body": "x"}, format="json")
    assert response.status_code == 403
    assert not Message.objects.exists()

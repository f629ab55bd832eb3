import json

import pytest
from asgiref.sync import async_to_sync
from channels.testing import HttpCommunicator
from django.test import AsyncClient
from rest_framework.authtoken.models import Token
from rest_framework.test import APIClient

from chat import api as chat_api
from chat.models import Membership, Message, Room
from chat.tickets import ticket_redeem
from voiceflow.asgi import application

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
    client.credentials(
        HTTP_AUTHORIZATION=f"Token {Token.objects.create(user=alice).key}"
    )
    return client


def register(api, username="carol", password=PASSWORD):
    return api.post(
        "/api/auth/register/",
        {"username": username, "password": password},
        format="json",
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
    good = api.post(
        "/api/auth/token/", {"username": "alice", "password": PASSWORD}, format="json"
    )
    assert good.status_code == 200 and good.json()["token"]
    bad = api.post(
        "/api/auth/token/", {"username": "alice", "password": "nope"}, format="json"
    )
    assert bad.status_code == 400


def test_ws_ticket_needs_authentication(api):
    assert api.post("/api/ws-ticket/").status_code == 401


def test_ws_ticket_is_issued_with_its_lifetime(alice_api):
    response = alice_api.post("/api/ws-ticket/")
    assert response.status_code == 200
    body = response.json()
    assert body["expires_in"] == 30 and len(body["ticket"]) >= 32


def test_a_ws_ticket_opens_a_socket_for_its_token_user_once(alice_api, alice):
    ticket = alice_api.post("/api/ws-ticket/").json()["ticket"]
    assert async_to_sync(ticket_redeem)(ticket) == alice.pk
    assert async_to_sync(ticket_redeem)(ticket) is None


@pytest.mark.parametrize(
    "header", ["Token guessed", "Token", "Token a b", "Bearer x", "token \xe9"]
)
def test_ws_ticket_refuses_a_bad_token_header_as_drf_does(api, alice, header):
    api.credentials(HTTP_AUTHORIZATION=header)
    response = api.post("/api/ws-ticket/")
    assert response.status_code == 401
    assert response.json()["detail"]


def test_ws_ticket_refuses_the_token_of_a_deactivated_user(alice_api, alice):
    alice.is_active = False
    alice.save()
    assert alice_api.post("/api/ws-ticket/").status_code == 401


def test_ws_ticket_is_post_only(alice_api):
    assert alice_api.get("/api/ws-ticket/").status_code == 405


def test_a_session_gets_a_ws_ticket_only_with_its_csrf_token(alice):
    client = APIClient(enforce_csrf_checks=True)
    client.force_login(alice)
    assert client.post("/api/ws-ticket/").status_code == 403
    client.get("/")  # the page sets the CSRF cookie
    token = client.cookies["csrftoken"].value
    response = client.post("/api/ws-ticket/", HTTP_X_CSRFTOKEN=token)
    assert response.status_code == 200
    assert async_to_sync(ticket_redeem)(response.json()["ticket"]) == alice.pk


# The server's own path for token holders (chat.api.WsTicketFastPath), through ASGI.


async def ticket_request(token=None, host=b"testserver", cookie=None):
    """(status, headers, JSON body) of POST /api/ws-ticket/ through the ASGI app."""
    headers = [(b"host", host), (b"content-type", b"application/json")]
    if token:
        headers.append((b"authorization", f"Token {token}".encode()))
    if cookie:
        headers.append((b"cookie", cookie.encode()))
    communicator = HttpCommunicator(
        application, "POST", "/api/ws-ticket/", b"{}", headers
    )
    response = await communicator.get_response(timeout=10)
    return (
        response["status"],
        {k.decode().lower(): v.decode() for k, v in response["headers"]},
        json.loads(response["body"]),
    )


@pytest.fixture
def alice_token(alice):
    return Token.objects.create(user=alice).key


async def test_a_token_gets_a_ws_ticket_for_its_user_from_the_server(
    alice, alice_token
):
    status, headers, body = await ticket_request(alice_token)
    assert status == 200
    assert headers["content-type"] == "application/json"
    assert headers["x-content-type-options"] == "nosniff"
    assert body["expires_in"] == 30
    assert await ticket_redeem(body["ticket"]) == alice.pk


async def test_a_token_request_never_reaches_django(alice_token, monkeypatch):
    def drf_view(*args, **kwargs):
        raise AssertionError("the ticket went through Django")

    monkeypatch.setattr(chat_api.WsTicketView, "post", drf_view)
    status, _, body = await ticket_request(alice_token)
    assert status == 200 and body["ticket"]


async def test_a_bad_token_gets_drfs_401_from_the_server(alice):
    status, _, body = await ticket_request("guessed")
    assert status == 401 and body["detail"]


async def test_a_deactivated_users_token_gets_no_ticket_from_the_server(
    alice, alice_token
):
    alice.is_active = False
    await alice.asave()
    status, _, _ = await ticket_request(alice_token)
    assert status == 401


async def test_a_session_without_csrf_gets_no_ticket_from_the_server(alice):
    client = AsyncClient()
    await client.aforce_login(alice)
    cookie = f"sessionid={client.cookies['sessionid'].value}"
    status, _, _ = await ticket_request(cookie=cookie)
    assert status == 403


async def test_a_host_not_allowed_is_refused_even_with_a_token(alice_token):
    communicator = HttpCommunicator(
        application,
        "POST",
        "/api/ws-ticket/",
        b"{}",
        [
            (b"host", b"evil.example"),
            (b"authorization", f"Token {alice_token}".encode()),
        ],
    )
    assert (await communicator.get_response(timeout=10))["status"] == 400


async def test_ws_tickets_count_against_the_rest_limit(alice_token, set_rate):
    set_rate("rest", 2)
    statuses = [(await ticket_request(alice_token))[0] for _ in range(3)]
    assert statuses == [200, 200, 429]
    _, headers, body = await ticket_request(alice_token)
    assert body["code"] == "rate_limited"
    assert 1 <= int(headers["retry-after"]) <= 900


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
    explicit = alice_api.post(
        "/api/rooms/", {"name": "Ops", "slug": "ops-1"}, format="json"
    )
    assert explicit.status_code == 201 and explicit.json()["slug"] == "ops-1"


def test_create_room_refuses_a_taken_or_bad_slug_and_a_missing_name(alice_api, lobby):
    taken = alice_api.post("/api/rooms/", {"name": "L", "slug": "lobby"}, format="json")
    assert taken.status_code == 400 and "slug" in taken.json()
    bad = alice_api.post(
        "/api/rooms/", {"name": "L", "slug": "Bad Slug"}, format="json"
    )
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
    assert seqs(alice_api.get("/api/rooms/lobby/messages/?limit=3")) == (
        [8, 9, 10],
        True,
    )
    assert seqs(alice_api.get("/api/rooms/lobby/messages/")) == (
        list(range(1, 11)),
        False,
    )


def test_history_after_and_before(alice_api, history):
    assert seqs(alice_api.get("/api/rooms/lobby/messages/?after=4&limit=3")) == (
        [5, 6, 7],
        True,
    )
    assert seqs(alice_api.get("/api/rooms/lobby/messages/?after=7&limit=3")) == (
        [8, 9, 10],
        False,
    )
    assert seqs(alice_api.get("/api/rooms/lobby/messages/?before=5&limit=3")) == (
        [2, 3, 4],
        True,
    )
    assert seqs(alice_api.get("/api/rooms/lobby/messages/?before=4&limit=3")) == (
        [1, 2, 3],
        False,
    )
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
    results = alice_api.get("/api/rooms/lobby/messages/?after=4&limit=1").json()[
        "results"
    ]
    assert (
        results[0]["deleted"] is True
        and results[0]["body"] == ""
        and results[0]["seq"] == 5
    )


def test_post_message_stores_and_makes_a_member(alice_api, alice, lobby):
    response = alice_api.post(
        "/api/rooms/lobby/messages/",
        {"body": " hi ", "client_id": "b-1"},
        format="json",
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
    first = alice_api.post(
        "/api/rooms/lobby/messages/", {"body": "a", "client_id": "k"}, format="json"
    )
    again = alice_api.post(
        "/api/rooms/lobby/messages/", {"body": "a", "client_id": "k"}, format="json"
    )
    assert again.status_code == 200 and again.json() == first.json()
    assert Message.objects.count() == 1


@pytest.mark.parametrize(
    "payload", [{}, {"body": ""}, {"body": "x" * 4001}, {"body": 12}]
)
def test_post_message_refuses_bad_bodies_with_a_field_error(alice_api, lobby, payload):
    response = alice_api.post("/api/rooms/lobby/messages/", payload, format="json")
    assert response.status_code == 400
    assert "body" in response.json()
    assert not Message.objects.exists()


def test_post_message_to_a_locked_room_is_403_and_unknown_is_404(alice_api, lobby):
    Room.objects.filter(pk=lobby.pk).update(is_locked=True)
    locked = alice_api.post("/api/rooms/lobby/messages/", {"body": "x"}, format="json")
    assert locked.status_code == 403 and locked.json()["code"] == "forbidden"
    missing = alice_api.post(
        "/api/rooms/nowhere/messages/", {"body": "x"}, format="json"
    )
    assert missing.status_code == 404
    assert not Message.objects.exists()


def test_leaving_a_room_ends_the_membership(alice_api, alice, lobby):
    Membership.objects.create(user=alice, room=lobby)
    assert alice_api.delete("/api/rooms/lobby/membership/").status_code == 204
    assert not Membership.objects.filter(user=alice).exists()


def test_the_api_needs_authentication(api, lobby):
    assert api.get("/api/rooms/").status_code == 401
    assert (
        api.post("/api/rooms/lobby/messages/", {"body": "x"}, format="json").status_code
        == 401
    )


def test_session_posts_need_a_csrf_token(alice, lobby):
    client = APIClient(enforce_csrf_checks=True)
    client.force_login(alice)
    response = client.post("/api/rooms/lobby/messages/", {"body": "x"}, format="json")
    assert response.status_code == 403
    assert not Message.objects.exists()


# Rate limits: REST per client IP, messages per user (shared with sockets).


def test_rest_requests_over_the_limit_get_429_with_retry_after(alice_api, set_rate):
    set_rate("rest", 3)
    assert [alice_api.get("/api/rooms/").status_code for _ in range(3)] == [200] * 3
    refused = alice_api.get("/api/rooms/")
    assert refused.status_code == 429
    assert refused.json()["code"] == "rate_limited"
    assert 1 <= int(refused["Retry-After"]) <= 900
    # Another client IP has its own window.
    assert alice_api.get("/api/rooms/", REMOTE_ADDR="192.0.2.9").status_code == 200


def test_retry_after_is_rounded_up_to_whole_seconds(alice_api, set_rate):
    set_rate("rest", 1, window=1.5)
    assert alice_api.get("/api/rooms/").status_code == 200
    refused = alice_api.get("/api/rooms/")
    assert refused.status_code == 429 and refused["Retry-After"] == "2"


def test_refused_credentials_count_against_the_rest_limit(api, set_rate):
    set_rate("rest", 2)
    api.credentials(HTTP_AUTHORIZATION="Token guessed")
    assert [api.get("/api/rooms/").status_code for _ in range(2)] == [401, 401]
    assert api.get("/api/rooms/").status_code == 429


def test_password_guessing_on_the_token_endpoint_is_limited(api, alice, set_rate):
    set_rate("rest", 2)
    guess = {"username": "alice", "password": "guess"}
    assert api.post("/api/auth/token/", guess, format="json").status_code == 400
    assert api.post("/api/auth/token/", guess, format="json").status_code == 400
    assert api.post("/api/auth/token/", guess, format="json").status_code == 429


def test_x_forwarded_for_counts_only_from_a_trusted_proxy(
    alice_api, set_rate, settings
):
    set_rate("rest", 1)

    def status_from(forwarded_for):
        return alice_api.get(
            "/api/rooms/", HTTP_X_FORWARDED_FOR=forwarded_for
        ).status_code

    assert status_from("192.0.2.1") == 200
    # Not trusted: a forged header does not buy a new window.
    assert status_from("192.0.2.2") == 429
    settings.TRUSTED_PROXIES = ["127.0.0.0/8"]
    assert status_from("192.0.2.3") == 200
    assert status_from("192.0.2.3") == 429


def test_message_posts_over_the_limit_get_429_and_replays_still_200(
    alice_api, lobby, set_rate
):
    set_rate("message", 3)
    posted = [
        alice_api.post(
            "/api/rooms/lobby/messages/",
            {"body": "x", "client_id": f"k{i}"},
            format="json",
        )
        for i in range(3)
    ]
    assert [r.status_code for r in posted] == [201] * 3
    refused = alice_api.post(
        "/api/rooms/lobby/messages/", {"body": "x", "client_id": "k3"}, format="json"
    )
    assert refused.status_code == 429 and 1 <= int(refused["Retry-After"]) <= 60
    replay = alice_api.post(
        "/api/rooms/lobby/messages/", {"body": "x", "client_id": "k0"}, format="json"
    )
    assert replay.status_code == 200 and replay.json() == posted[0].json()
    assert Message.objects.count() == 3


# Names: no control characters, no bidi overrides (one rule: chat.validators).

UNSAFE_NAMES = [
    "a\u202ab",
    "a\u202bb",
    "a\u202cb",
    "a\u202db",
    "a\u202eb",
    "a\u2066b",
    "a\u2067b",
    "a\u2068b",
    "a\u2069b",
    "a\x00b",
    "a\x07b",
    "a\x7fb",
    "a\x85b",
]


@pytest.mark.parametrize("username", UNSAFE_NAMES)
def test_register_refuses_control_and_bidi_characters(api, username):
    response = register(api, username)
    assert response.status_code == 400 and "username" in response.json()


@pytest.mark.parametrize("name", UNSAFE_NAMES + ["tab\there", "new\nline"])
def test_room_names_refuse_control_and_bidi_characters(alice_api, name):
    response = alice_api.post("/api/rooms/", {"name": name, "slug": "r"}, format="json")
    assert response.status_code == 400 and "name" in response.json()
    assert not Room.objects.filter(slug="r").exists()


def test_room_names_may_be_any_script(alice_api):
    response = alice_api.post(
        "/api/rooms/", {"name": "שלום עולם", "slug": "hello"}, format="json"
    )
    assert response.status_code == 201


@pytest.mark.parametrize("username", ["a\u202eb", "a\u2066b", "a\x00b"])
def test_the_signup_page_refuses_control_and_bidi_characters(
    client, username, django_user_model
):
    response = client.post(
        "/signup/", {"username": username, "password1": PASSWORD, "password2": PASSWORD}
    )
    assert response.status_code == 200  # the form again, with its error
    assert not django_user_model.objects.exists()


def test_the_room_form_refuses_bidi_names(client, alice):
    client.force_login(alice)
    response = client.post("/", {"name": "evil\u202egnp", "slug": "evil"})
    assert response.status_code == 200
    assert not Room.objects.filter(slug="evil").exists()


# Request bodies: malformed JSON is a 400, never a server error.


@pytest.mark.parametrize(
    "raw",
    [
        "[" * 100_000 + "]" * 100_000,  # past Python's recursion limit
        '{"body": ' + "[" * 9 + "]" * 9 + "}",  # past the depth bound
        b"\xff\xfe{}",  # not UTF-8
        '{"body": NaN}',
        '{"body": "x",',
    ],
    ids=["very-deep", "deep", "not-utf8", "nan", "truncated"],
)
def test_malformed_json_bodies_are_400(alice_api, lobby, raw):
    response = alice_api.post(
        "/api/rooms/lobby/messages/", raw, content_type="application/json"
    )
    assert response.status_code == 400
    assert not Message.objects.exists()


@pytest.mark.parametrize(
    "path,payload,field",
    [
        ("/api/rooms/", {"name": {"a": 1}, "slug": "x"}, "name"),
        ("/api/rooms/", {"name": "ok", "slug": ["x"]}, "slug"),
        ("/api/rooms/lobby/messages/", {"body": {"a": [1]}}, "body"),
        (
            "/api/rooms/lobby/messages/",
            {"body": "x", "client_id": {"x": 1}},
            "client_id",
        ),
        ("/api/auth/register/", {"username": ["x"], "password": PASSWORD}, "username"),
    ],
)
def test_fields_of_the_wrong_type_are_400_naming_the_field(
    alice_api, lobby, path, payload, field
):
    response = alice_api.post(path, payload, format="json")
    assert response.status_code == 400 and field in response.json()
    assert not Message.objects.exists()


def test_register_refuses_a_username_taken_in_another_case(api, alice):
    response = register(api, "Alice")
    assert response.status_code == 400
    assert "already exists" in response.json()["username"][0]


@pytest.mark.parametrize("char", ["\u200b", "\u200d", "\u2060", "\ufeff", "\u200f"])
def test_register_and_rooms_refuse_zero_width_characters(api, alice_api, char):
    assert register(api, f"car{char}ol").status_code == 400
    response = alice_api.post("/api/rooms/", {"name": f"Lob{char}by"}, format="json")
    assert response.status_code == 400 and "name" in response.json()


def test_deep_json_to_the_token_endpoint_is_a_400(api):
    deep = "[" * 100_000 + "]" * 100_000
    response = api.post("/api/auth/token/", deep, content_type="application/json")
    assert response.status_code == 400

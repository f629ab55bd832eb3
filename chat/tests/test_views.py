import json
import re

import pytest
from django.test import Client

from chat.models import Room

pytestmark = pytest.mark.django_db

XSS = "<img src=x onerror=alert(1)>"


def test_pages_need_a_login(client, lobby):
    for path in ("/", "/rooms/lobby/"):
        response = client.get(path)
        assert response.status_code == 302 and response["Location"].startswith(
            "/login/"
        )


def test_sign_up_logs_in_and_lands_in_the_lobby(client, lobby):
    response = client.post(
        "/signup/",
        {
            "username": "newbie",
            "password1": "Correct-Horse-9",
            "password2": "Correct-Horse-9",
        },
    )
    assert response.status_code == 302 and response["Location"] == "/rooms/lobby/"
    assert client.get("/rooms/lobby/").status_code == 200


def test_sign_up_shows_field_errors(client):
    response = client.post(
        "/signup/", {"username": "x y", "password1": "a", "password2": "b"}
    )
    assert response.status_code == 200
    assert b"aria-invalid" in response.content or b"errorlist" in response.content


def test_log_in_and_log_out(client, alice):
    response = client.post(
        "/login/", {"username": "alice", "password": "Correct-Horse-9"}
    )
    assert response.status_code == 302
    assert client.get("/").status_code == 200
    assert client.post("/logout/").status_code == 302
    assert client.get("/").status_code == 302


def test_room_list_creates_a_room_and_opens_it(client, alice, lobby):
    client.force_login(alice)
    listing = client.get("/")
    assert b"/rooms/lobby/" in listing.content
    response = client.post("/", {"name": "Book Club", "slug": ""})
    assert response.status_code == 302 and response["Location"] == "/rooms/book-club/"
    assert Room.objects.filter(slug="book-club", created_by=alice).exists()


def test_room_list_shows_a_taken_slug_as_a_form_error(client, alice, lobby):
    client.force_login(alice)
    response = client.post("/", {"name": "Lobby two", "slug": "lobby"})
    assert response.status_code == 200
    assert b"already exists" in response.content


def test_forms_carry_a_csrf_token_and_refuse_posts_without_it(alice, lobby):
    client = Client(enforce_csrf_checks=True)
    client.force_login(alice)
    assert b"csrfmiddlewaretoken" in client.get("/").content
    assert client.post("/", {"name": "Sneaky"}).status_code == 403
    assert not Room.objects.filter(name="Sneaky").exists()


def test_user_strings_are_escaped_in_pages(client, alice):
    Room.objects.create(slug="xss", name=XSS)
    client.force_login(alice)
    for path in ("/", "/rooms/xss/"):
        html = client.get(path).content.decode()
        assert XSS not in html
        assert "&lt;img src=x onerror=alert(1)&gt;" in html


def test_the_room_page_gives_the_client_its_configuration(
    client, alice, lobby, settings
):
    settings.VOICEFLOW = {**settings.VOICEFLOW, "EDIT_WINDOW": 600}
    client.force_login(alice)
    html = client.get("/rooms/lobby/").content.decode()
    config = json.loads(re.search(r'id="vf-config"[^>]*>(.*?)</script>', html).group(1))
    assert config["room"] == "lobby" and config["user"] == "alice"
    assert config["wsPath"] == "/ws/chat/"
    assert config["messagesUrl"] == "/api/rooms/lobby/messages/"
    assert config["searchUrl"] == "/api/search/"
    assert config["editWindow"] == 600  # the page offers Edit only inside the window
    assert config["canModerate"] is False
    assert "room.js" in html


def test_a_dm_page_is_named_after_the_other_members_for_each_side(
    client, alice, bob, lobby
):
    from chat import services

    dm, _ = services.dm_open(user=alice, usernames=["bob"])
    for user, other in ((alice, "bob"), (bob, "alice")):
        client.force_login(user)
        html = client.get(f"/rooms/{dm.slug}/").content.decode()
        config = json.loads(
            re.search(r'id="vf-config"[^>]*>(.*?)</script>', html).group(1)
        )
        assert (config["roomName"], config["roomKind"]) == (other, "direct")
        assert config["roomsUrl"] == "/api/rooms/" and config["dmsUrl"] == "/api/dms/"
        assert f'<h1 id="room-name">{other}</h1>' in html


def page_config(client, user, slug):
    client.force_login(user)
    html = client.get(f"/rooms/{slug}/").content.decode()
    return json.loads(re.search(r'id="vf-config"[^>]*>(.*?)</script>', html).group(1))


def test_the_room_page_tells_a_moderator_it_may_delete_others_messages(
    client, alice, bob, lobby, django_user_model
):
    from django.contrib.auth.models import Permission

    from chat import services

    staff = django_user_model.objects.create_user(
        "stan", password="Stan-Pass-123", is_staff=True
    )
    alice.user_permissions.add(Permission.objects.get(codename="delete_message"))
    root = django_user_model.objects.create_superuser("root", password="Root-Pass-1")
    dm, _ = services.dm_open(user=alice, usernames=["bob"])
    assert page_config(client, alice, "lobby")["canModerate"] is True
    assert page_config(client, root, "lobby")["canModerate"] is True
    assert page_config(client, staff, "lobby")["canModerate"] is False
    assert page_config(client, bob, "lobby")["canModerate"] is False
    # In a DM a moderator is a participant like any other.
    assert page_config(client, alice, dm.slug)["canModerate"] is False
    # What the page applies to the rooms it opens without a reload (not to DMs).
    assert page_config(client, alice, dm.slug)["isModerator"] is True
    assert page_config(client, bob, "lobby")["isModerator"] is False


def test_an_unknown_room_page_is_404(client, alice):
    client.force_login(alice)
    assert client.get("/rooms/nowhere/").status_code == 404


def test_static_files_are_served_by_the_app(client):
    response = client.get("/static/chat/room.js")
    assert response.status_code == 200
    assert b"import" in b"".join(response.streaming_content)


# Limits on the pages' forms (login, sign-up, room creation)

GOOD = "Correct-Horse-9"


def log_in(client, username, password, path="/login/"):
    return client.post(path, {"username": username, "password": password})


@pytest.fixture
def authentications(monkeypatch):
    """How many times a password was checked (hashed) by the auth backend."""
    from django.contrib.auth.backends import ModelBackend

    calls = []
    real = ModelBackend.authenticate

    def counted(self, request, username=None, password=None, **kwargs):
        calls.append(username)
        return real(self, request, username=username, password=password, **kwargs)

    monkeypatch.setattr(ModelBackend, "authenticate", counted)
    return calls


@pytest.mark.parametrize("path", ["/login/", "/admin/login/"])
def test_failed_logins_per_username_are_limited_without_hashing(
    client, alice, set_rate, authentications, path
):
    set_rate("login_user", 2, window=300)
    for _ in range(2):
        assert log_in(client, "alice", "wrong-password", path).status_code == 200
    refused = log_in(client, "ALICE", GOOD, path)  # even the right password
    assert refused.status_code == 429
    assert b"Too many login attempts" in refused.content
    assert len(authentications) == 2  # the refused attempt hashed nothing
    assert "_auth_user_id" not in client.session


def test_failed_logins_per_ip_are_limited_across_usernames(
    client, alice, bob, set_rate
):
    set_rate("login", 3, window=300)
    for name in ("alice", "bob", "nobody"):
        assert log_in(client, name, "wrong-password").status_code == 200
    assert log_in(client, "bob", GOOD).status_code == 429
    # Another client address has its own window.
    other = Client(REMOTE_ADDR="198.51.100.7")
    assert log_in(other, "bob", GOOD).status_code == 302


def test_successful_logins_do_not_count(client, alice, set_rate):
    set_rate("login_user", 1, window=300)
    set_rate("login", 1, window=300)
    for _ in range(3):
        assert log_in(client, "alice", GOOD).status_code == 302
        client.post("/logout/")


def test_sign_ups_per_ip_are_limited(client, set_rate, django_user_model):
    set_rate("signup", 2, window=3600)
    for name in ("one", "two", "three"):
        response = client.post(
            "/signup/", {"username": name, "password1": GOOD, "password2": GOOD}
        )
        client.post("/logout/")
    assert response.status_code == 429
    assert b"Too many sign-ups" in response.content
    assert not django_user_model.objects.filter(username="three").exists()


def test_room_creation_is_limited_per_ip_across_page_and_api(
    client, alice, lobby, set_rate
):
    from rest_framework.test import APIClient

    set_rate("room_create", 2, window=3600)
    client.force_login(alice)
    assert client.post("/", {"name": "One"}).status_code == 302
    api = APIClient()
    api.force_authenticate(alice)
    assert api.post("/api/rooms/", {"name": "Two"}, format="json").status_code == 201
    page = client.post("/", {"name": "Three"})
    assert page.status_code == 429
    assert b"Too many rooms created" in page.content
    assert api.post("/api/rooms/", {"name": "Four"}, format="json").status_code == 429
    assert not Room.objects.filter(name__in=["Three", "Four"]).exists()


def test_a_refused_room_form_does_not_count(client, alice, lobby, set_rate):
    set_rate("room_create", 1, window=3600)
    client.force_login(alice)
    assert client.post("/", {"name": "Dup", "slug": "lobby"}).status_code == 200
    assert client.post("/", {"name": "Fine"}).status_code == 302


def test_the_room_list_is_paginated(client, alice, presence_conf):
    presence_conf(ROOM_PAGE_SIZE=2)
    for n in range(4):
        Room.objects.create(slug=f"r{n}", name=f"Room {n}")
    slugs = list(Room.objects.order_by("slug").values_list("slug", flat=True))
    assert len(slugs) == 5  # with the lobby
    client.force_login(alice)

    def page(query=""):
        html = client.get(f"/{query}").content.decode()
        return re.findall(r'data-slug="([^"]+)"', html), html

    first, html = page()
    assert first == slugs[:2] and 'href="?page=2"' in html
    last, html = page("?page=3")
    assert last == slugs[4:] and 'href="?page=2"' in html and "?page=4" not in html
    assert page("?page=junk")[0] == slugs[:2]


# Sign-up and name rules


def test_sign_up_with_a_taken_username_in_any_case_is_a_form_error(client, alice):
    response = client.post(
        "/signup/", {"username": "Alice", "password1": GOOD, "password2": GOOD}
    )
    assert response.status_code == 200
    assert b"already exists" in response.content


UNSAFE = [
    "\u200b",
    "\u200c",
    "\u200d",
    "\u2060",
    "\ufeff",
    "\u200e",
    "\u200f",
    "\u202e",
]


@pytest.mark.parametrize("char", UNSAFE)
def test_pages_refuse_invisible_characters_in_names(client, alice, char):
    signup = client.post(
        "/signup/", {"username": f"ev{char}il", "password1": GOOD, "password2": GOOD}
    )
    assert signup.status_code == 200 and b"not allowed" in signup.content
    client.force_login(alice)
    room = client.post("/", {"name": f"Lob{char}by", "slug": "lobby2"})
    assert room.status_code == 200 and b"not allowed" in room.content
    assert not Room.objects.filter(slug="lobby2").exists()


@pytest.mark.parametrize(
    "path, fields",
    [
        ("/signup/", {"username": "newbie", "password1": GOOD, "password2": GOOD}),
        ("/login/", {"username": "alice", "password": GOOD}),
        ("/api/auth/register/", {"username": "newbie", "password": GOOD}),
        ("/api/auth/token/", {"username": "alice", "password": GOOD}),
    ],
)
def test_debug_error_pages_never_show_passwords(
    alice, settings, monkeypatch, path, fields
):
    from django.contrib.auth import forms as auth_forms
    from rest_framework.authtoken import serializers as token_serializers

    from chat import forms, services

    def broken(*args, **kwargs):
        raise RuntimeError("boom")

    monkeypatch.setattr(forms.SignupForm, "save", broken)
    monkeypatch.setattr(auth_forms, "authenticate", broken)
    monkeypatch.setattr(services, "user_register", broken)
    monkeypatch.setattr(token_serializers, "authenticate", broken)
    settings.DEBUG = True
    client = Client(raise_request_exception=False)
    response = client.post(path, fields)
    assert response.status_code == 500
    html = response.content.decode()
    assert "RuntimeError" in html  # the debug page, with its request data
    assert GOOD not in html

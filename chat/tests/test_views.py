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


def test_the_room_page_gives_the_client_its_configuration(client, alice, lobby):
    client.force_login(alice)
    html = client.get("/rooms/lobby/").content.decode()
    config = json.loads(re.search(r'id="vf-config"[^>]*>(.*?)</script>', html).group(1))
    assert config["room"] == "lobby" and config["user"] == "alice"
    assert config["wsPath"] == "/ws/chat/"
    assert config["messagesUrl"] == "/api/rooms/lobby/messages/"
    assert "room.js" in html


def test_an_unknown_room_page_is_404(client, alice):
    client.force_login(alice)
    assert client.get("/rooms/nowhere/").status_code == 404


def test_static_files_are_served_by_the_app(client):
    response = client.get("/static/chat/room.js")
    assert response.status_code == 200
    assert b"import" in b"".join(response.streaming_content)

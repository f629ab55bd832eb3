"""Static files through the ASGI stack; a middleware chain that stays on the loop."""

import pytest
from django.conf import settings
from django.test import AsyncClient, Client
from django.utils.module_loading import import_string


def body_of(response):
    return b"".join(response.streaming_content)  # a file, read in the test's thread


async def test_a_static_file_is_served_with_its_type_and_caching_headers():
    response = await AsyncClient().get("/static/chat/room.js")
    assert response.status_code == 200
    assert "max-age" in response["Cache-Control"]
    assert response["Content-Type"].startswith("text/javascript")
    assert b"import" in body_of(response)


async def test_a_missing_static_file_is_a_404_not_an_error():
    response = await AsyncClient().get("/static/chat/nothing-here.js")
    assert response.status_code == 404


@pytest.mark.django_db
async def test_other_requests_pass_through_to_django():
    response = await AsyncClient().get("/login/")
    assert response.status_code == 200
    assert b"csrfmiddlewaretoken" in response.content


async def test_in_debug_files_are_looked_up_on_disk_for_each_request(settings):
    settings.WHITENOISE_AUTOREFRESH = True
    response = await AsyncClient().get("/static/forms.js")
    assert response.status_code == 200
    assert body_of(response)


def test_every_middleware_can_run_on_the_event_loop():
    # One sync-only middleware sends every request through a thread and back.
    sync_only = [
        path
        for path in settings.MIDDLEWARE
        if not getattr(import_string(path), "async_capable", False)
    ]
    assert sync_only == []


@pytest.mark.django_db
@pytest.mark.parametrize("path", ["/login/", "/signup/", "/admin/login/"])
def test_pages_send_a_content_security_policy_without_inline_script(path):
    response = Client().get(path, HTTP_HOST="localhost:8000")
    policy = dict(
        directive.strip().split(" ", 1)
        for directive in response["Content-Security-Policy"].split(";")
    )
    assert policy["default-src"] == "'self'"
    assert policy["script-src"] == "'self'"
    assert "unsafe" not in response["Content-Security-Policy"]
    assert "ws://localhost:8000" in policy["connect-src"]
    assert "wss://localhost:8000" in policy["connect-src"]
    assert policy["frame-ancestors"] == "'none'"


def test_templates_have_no_inline_script_or_event_handlers():
    import re

    from voiceflow.tests.servers import ROOT

    for template in (ROOT / "templates").rglob("*.html"):
        html = template.read_text()
        assert not re.search(r"\son[a-z]+\s*=", html), template
        for tag in re.findall(r"<script[^>]*>", html):
            assert "src=" in tag, (template, tag)


@pytest.mark.django_db
async def test_hsts_is_sent_over_https_with_secure_cookies(settings):
    settings.SECURE_HSTS_SECONDS = 31536000
    response = await AsyncClient().get("/login/", secure=True)
    assert response["Strict-Transport-Security"].startswith("max-age=31536000")

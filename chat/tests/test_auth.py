"""The socket's Origin check: scheme, host and port must be the page's own."""

import pytest

from chat.auth import origin_allowed


def scope(origin, host="127.0.0.1:8000", scheme="ws", client="127.0.0.1", **headers):
    items = [(b"host", host.encode())] if host else []
    if origin is not None:
        items.append((b"origin", origin.encode()))
    items += [(k.replace("_", "-").encode(), v.encode()) for k, v in headers.items()]
    return {
        "type": "websocket",
        "scheme": scheme,
        "client": (client, 5000),
        "headers": items,
    }


@pytest.mark.parametrize(
    "origin, host, scheme",
    [
        (None, "127.0.0.1:8000", "ws"),  # bots send no Origin
        ("http://127.0.0.1:8000", "127.0.0.1:8000", "ws"),
        ("http://localhost:8000", "localhost:8000", "ws"),
        ("https://localhost", "localhost", "wss"),
        ("https://localhost:443", "localhost", "wss"),
        ("http://[::1]:8000", "[::1]:8000", "ws"),
    ],
)
def test_the_pages_own_origin_is_allowed(origin, host, scheme):
    assert origin_allowed(scope(origin, host, scheme))


@pytest.mark.parametrize(
    "origin, host, scheme",
    [
        ("http://127.0.0.1:9999", "127.0.0.1:8000", "ws"),  # another port
        ("https://127.0.0.1:8000", "127.0.0.1:8000", "ws"),  # another scheme
        ("http://localhost:8000", "127.0.0.1:8000", "ws"),  # another host
        ("http://evil.example", "evil.example", "ws"),  # a host not allowed
        ("http://127.0.0.1.evil.example", "127.0.0.1:8000", "ws"),
        ("null", "127.0.0.1:8000", "ws"),
        ("http://127.0.0.1:8000", None, "ws"),  # no Host to compare with
        ("http://127.0.0.1:99999", "127.0.0.1:99999", "ws"),
    ],
)
def test_other_origins_are_refused(origin, host, scheme):
    assert not origin_allowed(scope(origin, host, scheme))


def test_behind_a_tls_proxy_csrf_trusted_origins_are_allowed(settings):
    settings.ALLOWED_HOSTS = ["chat.example.com"]
    settings.CSRF_TRUSTED_ORIGINS = ["https://chat.example.com"]
    # The proxy ends TLS and speaks plain ws to us with the public Host.
    proxied = scope("https://chat.example.com", "chat.example.com", "ws")
    assert origin_allowed(proxied)
    assert not origin_allowed(
        scope("https://chat.example.com:8443", "chat.example.com")
    )
    assert not origin_allowed(scope("http://other.example", "chat.example.com"))


def test_a_trusted_proxy_may_say_the_scheme_was_https(settings):
    settings.ALLOWED_HOSTS = ["chat.example.com"]
    origin = "https://chat.example.com"
    forged = scope(origin, "chat.example.com", x_forwarded_proto="https")
    assert not origin_allowed(forged)  # from anyone else the header means nothing
    settings.TRUSTED_PROXIES = ["127.0.0.1"]
    assert origin_allowed(forged)

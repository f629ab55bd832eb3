"""Who is on a socket (origin check, session or ticket) or sends an API token."""

from importlib import import_module
from urllib.parse import parse_qs, urlsplit

from channels.auth import get_user
from django.conf import settings
from django.http.cookie import parse_cookie
from django.http.request import split_domain_port, validate_host

from . import selectors
from .ratelimit import scope_secure
from .tickets import ticket_redeem


def header(scope, name):
    """An ASGI scope's header (`name` in lowercase bytes) as text, or None."""
    for key, value in scope.get("headers", ()):
        if key == name:
            return value.decode("latin-1")
    return None


def _netloc_allowed(netloc):
    domain, _port = split_domain_port(netloc)
    return bool(domain) and validate_host(domain, settings.ALLOWED_HOSTS)


def host_allowed(scope):
    """True if the request's Host header names one of ALLOWED_HOSTS."""
    return _netloc_allowed(header(scope, b"host") or "")


_DEFAULT_PORTS = {"http": 80, "https": 443}


def _origin_parts(url):
    """(scheme, host, port) of an origin URL, ports filled in; None if malformed."""
    try:
        parts = urlsplit(url)
        port = parts.port or _DEFAULT_PORTS.get(parts.scheme)
    except ValueError:
        return None
    if parts.scheme not in _DEFAULT_PORTS or not parts.hostname:
        return None
    return parts.scheme, parts.hostname, port


def origin_allowed(scope):
    """True if the socket has no Origin (bots) or the page's own origin.

    The page's own: the scheme the client used (ws → http, wss → https, or a trusted
    proxy's X-Forwarded-Proto), the Host header (one of ALLOWED_HOSTS) and its port;
    or one of CSRF_TRUSTED_ORIGINS (a TLS proxy that forwards plain ws), as Django's
    CSRF check allows for the page's forms.
    """
    origin = header(scope, b"origin")
    if origin is None:
        return True
    wanted = _origin_parts(origin)
    if wanted is None:
        return False
    if any(
        _trusted_origin(wanted, trusted) for trusted in settings.CSRF_TRUSTED_ORIGINS
    ):
        return True
    host = header(scope, b"host") or ""
    if not _netloc_allowed(host):
        return False
    scheme = "https" if scope_secure(scope) else "http"
    return wanted == _origin_parts(f"{scheme}://{host}")


def _trusted_origin(wanted, trusted):
    """Django's CSRF_TRUSTED_ORIGINS rule: exact, or `scheme://*.domain` subdomains."""
    if "://*." in trusted:
        scheme, _, domain = trusted.partition("://*.")
        parts = _origin_parts(f"{scheme}://{domain}")
        return (
            parts is not None
            and (wanted[0], wanted[2]) == (parts[0], parts[2])
            and (wanted[1] == parts[1] or wanted[1].endswith("." + parts[1]))
        )
    return wanted == _origin_parts(trusted)


async def _ticket_user(ticket):
    """The active user a ticket was issued for (redeeming it), or None."""
    user_id = await ticket_redeem(ticket)
    if user_id is None:
        return None
    return await selectors.user_active_aget(user_id)


async def _session_user(scope):
    """The user signed in with the socket's session cookie (browsers), or None.

    Done here, once, instead of channels' AuthMiddlewareStack, which copies the scope
    three times and wraps every send of every socket, ticket or not.
    """
    key = parse_cookie(header(scope, b"cookie") or "").get(settings.SESSION_COOKIE_NAME)
    if not key:
        return None
    session = import_module(settings.SESSION_ENGINE).SessionStore(session_key=key)
    user = await get_user({"session": session})
    return user if user.is_authenticated else None


async def socket_user(scope):
    """The authenticated user of a socket (ticket first, then session), or None.

    Raises if the ticket store is unreachable, so the caller can close with 1013.
    """
    query = parse_qs(scope.get("query_string", b"").decode("latin-1"))
    tickets = query.get("ticket")
    if tickets:
        return await _ticket_user(tickets[0])
    user = scope.get("user")  # set by an outer auth middleware, if one is used
    if user is not None:
        return user if user.is_authenticated else None
    return await _session_user(scope)


def _token_key(authorization):
    """The key of an `Authorization: Token <key>` header (as DRF parses it), or None."""
    parts = (authorization or "").encode("latin-1").split()
    if len(parts) != 2 or parts[0].lower() != b"token":
        return None
    try:
        return parts[1].decode()
    except UnicodeError:
        return None


async def token_user(authorization):
    """The active user of an Authorization header's API token, or None (none, bad)."""
    key = _token_key(authorization)
    if key is None:
        return None
    return await selectors.token_user_aget(key)

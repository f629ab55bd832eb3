"""ASGI entry point: HTTP through Django, WebSockets to their consumers."""

import os

from asgiref.sync import markcoroutinefunction
from django.core.asgi import get_asgi_application

os.environ.setdefault("DJANGO_SETTINGS_MODULE", "voiceflow.settings")
django_asgi_app = get_asgi_application()

from django.conf import settings  # noqa: E402

from chat.api import WsTicketFastPath  # noqa: E402
from chat.ratelimit import scope_secure  # noqa: E402

from .health import PROBE_PATHS, probe  # noqa: E402
from .routing import websocket_routes  # noqa: E402

http_application = WsTicketFastPath(django_asgi_app)


async def _socket_refused(receive, send):
    await receive()  # websocket.connect
    await send({"type": "websocket.close"})  # before accept: an HTTP 403


@markcoroutinefunction
def application(scope, receive, send):
    """HTTP to Django (tickets for API tokens and the balancer's probes first); a socket
    to its path's consumer.

    A plain function returning the consumer's coroutine: channels' ProtocolTypeRouter,
    URLRouter and as_asgi() each kept a suspended frame (and URLRouter a copy of the
    scope) for as long as a socket lived, ~1.5 KB per idle socket. Origins and who is
    on the socket are checked by the consumer after accept (chat.auth).
    """
    if settings.TRUSTED_PROXIES and scope_secure(scope):
        # TLS ended at a trusted proxy: Django (is_secure, HSTS, CSRF) and the
        # socket's Origin check see the client's scheme.
        scope = {**scope, "scheme": "wss" if scope["type"] == "websocket" else "https"}
    if scope["type"] == "websocket":
        consumer_class = websocket_routes.get(scope["path"])
        if consumer_class is None:
            return _socket_refused(receive, send)
        return consumer_class()(scope, receive, send)
    if scope["path"] in PROBE_PATHS:
        return probe(scope, receive, send)
    return http_application(scope, receive, send)

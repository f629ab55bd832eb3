"""ASGI entry point: HTTP through Django, WebSockets through Channels."""

import os

from django.core.asgi import get_asgi_application

os.environ.setdefault("DJANGO_SETTINGS_MODULE", "voiceflow.settings")
django_asgi_app = get_asgi_application()

from channels.routing import ProtocolTypeRouter, URLRouter  # noqa: E402

from chat.api import WsTicketFastPath  # noqa: E402

from .routing import websocket_urlpatterns  # noqa: E402

# Origins are checked by the consumer after accept (close 4403), not at handshake;
# so is who is on the socket (a ticket, or the session cookie: chat.auth).
application = ProtocolTypeRouter(
    {
        "http": WsTicketFastPath(django_asgi_app),
        "websocket": URLRouter(websocket_urlpatterns),
    }
)

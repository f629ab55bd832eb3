"""JSON responses for the raw ASGI endpoints that bypass Django's request cycle."""

from collections.abc import Awaitable, Callable
from typing import Any

import orjson
from django.conf import settings


async def json_send(
    send: Callable[[dict], Awaitable[None]],
    data: Any,
    status_code: int,
    headers: dict[str, str],
) -> None:
    """A JSON response with the headers Django's security middleware would add."""
    body = orjson.dumps(data)
    await send(
        {
            "type": "http.response.start",
            "status": status_code,
            "headers": [
                (b"content-type", b"application/json"),
                (b"content-length", str(len(body)).encode()),
                (b"x-content-type-options", b"nosniff"),
                (b"x-frame-options", settings.X_FRAME_OPTIONS.encode()),
                (b"referrer-policy", settings.SECURE_REFERRER_POLICY.encode()),
                *[(k.lower().encode(), v.encode()) for k, v in headers.items()],
            ],
        }
    )
    await send({"type": "http.response.body", "body": body})

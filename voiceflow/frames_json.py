"""A socket frame's JSON text, for every app that sends frames."""

from typing import Any

import orjson


def frame_encode(frame: dict[str, Any]) -> str:
    """A frame as JSON text (encoded once, forwarded as is to every socket)."""
    return orjson.dumps(frame).decode()

"""What the app hands the transport: prebuilt WebSocket frames, and the names of the
two ASGI extensions through which the server takes them (voiceflow.runtime.websocket).

Only the runtime builds WebSocket frames; chat builds a broadcast's frame here once
per process and writes it to many sockets.
"""

from .websocket import FRAME_EXTENSION, OUTPUT_EXTENSION, text_frame

__all__ = ["FRAME_EXTENSION", "OUTPUT_EXTENSION", "prebuilt_frame", "text_frame"]


def prebuilt_frame(text: str) -> bytes:
    """The WebSocket frame carrying `text`: built once, written to many sockets."""
    return text_frame(text.encode())

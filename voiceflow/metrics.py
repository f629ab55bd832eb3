"""Prometheus metrics of every app, defined once; GET /metrics renders them.

With PROMETHEUS_MULTIPROC_DIR set, prometheus-client keeps values in files there and
/metrics adds up every process's; each server process needs the directory emptied at
deploy time (the client's documented multi-process mode).
"""

import atexit
import os

from django.conf import settings
from prometheus_client import (
    CONTENT_TYPE_LATEST,
    CollectorRegistry,
    Counter,
    Gauge,
    Histogram,
    generate_latest,
    multiprocess,
)

# Only the contract's frame types become label values; anything else is "other", so a
# client cannot grow the series count by inventing types.
FRAME_TYPES = frozenset(
    {
        "join",
        "leave",
        "message",
        "typing",
        "ping",
        "status",
        "delete",
        "edit",
        "hello",
        "offline_messages",
        "joined",
        "left",
        "ack",
        "pong",
        "presence",
        "member_joined",
        "member_left",
        "message_deleted",
        "message_edited",
        "room_locked",
        "error",
    }
)

SOCKETS = Gauge(
    "voiceflow_sockets", "Live WebSocket connections.", multiprocess_mode="livesum"
)
FRAMES_RECEIVED = Counter(
    "voiceflow_frames_received", "Frames received from clients, by type.", ["type"]
)
FRAMES_SENT = Counter(
    "voiceflow_frames_sent", "Frames sent to clients, by type.", ["type"]
)
MESSAGES_STORED = Counter("voiceflow_messages_stored", "Messages stored (not replays).")
MESSAGE_STORE_SECONDS = Histogram(
    "voiceflow_message_store_seconds",
    "Time to store a message: waiting for the room's writer, then seq bump, insert "
    "and commit (posts that queued together share one statement).",
    buckets=(0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5),
)
DB_BATCH_SIZE = Histogram(
    "voiceflow_db_batch_size",
    "Items per group-commit statement (message posts that queued behind a busy "
    "writer connection and went out in one statement).",
    buckets=(1, 2, 4, 8, 16, 32, 64, 128, 256),
)
FANOUT_SECONDS = Histogram(
    "voiceflow_fanout_seconds",
    "Time to hand one event to the channel layer for a room's sockets.",
    buckets=(0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 1),
)
RATE_LIMITED = Counter(
    "voiceflow_rate_limited",
    "Requests refused by a rate limit, by kind (message, typing, join, rest, connect, "
    "sockets).",
    ["kind"],
)
ERRORS = Counter(
    "voiceflow_errors", "Error frames and responses, by contract code.", ["code"]
)
SOCKET_SHED = Counter(
    "voiceflow_socket_shed",
    "Typing and presence events not sent to a socket whose unread output passed "
    "VOICEFLOW_SOCKET_SOFT_BYTES, by type.",
    ["type"],
)
SOCKET_OVERFLOW_CLOSED = Counter(
    "voiceflow_socket_overflow_closed",
    "Sockets closed with 1013 because their unread output passed "
    "VOICEFLOW_SOCKET_HARD_BYTES.",
)
SWEEP_RUNS = Counter("voiceflow_sweep_runs", "Presence sweeps run.")
SWEEP_REMOVALS = Counter(
    "voiceflow_sweep_removals", "Dead sockets removed by the presence sweep."
)


def frame_type(value):
    """A frame type as a metric label: the contract's types, else "other"."""
    return value if isinstance(value, str) and value in FRAME_TYPES else "other"


# The labelled children of the per-frame counters, made once per type: `labels()`
# takes a lock and builds a key on every call, and these count every frame.
_received: dict = {}
_sent: dict = {}


def _labelled(children: dict, counter: Counter, kind: object) -> Counter:
    """`counter`'s child for frame type `kind`, made on first use."""
    child = children.get(kind) if isinstance(kind, str) else None
    if child is None:
        label = frame_type(kind)
        child = children.setdefault(label, counter.labels(label))
        if label == kind:  # only the contract's types get an entry of their own
            children[kind] = child
    return child


def frame_received(kind: object) -> None:
    """Count a frame received from a client, by its type."""
    _labelled(_received, FRAMES_RECEIVED, kind).inc()


def frames_sent(kind: object, count: int = 1) -> None:
    """Count `count` frames of one type sent to clients."""
    _labelled(_sent, FRAMES_SENT, kind).inc(count)


def render():
    """(body, content type) of the Prometheus text exposition."""
    if settings.PROMETHEUS_MULTIPROC_DIR:
        registry = CollectorRegistry()
        multiprocess.MultiProcessCollector(registry)
    else:
        from prometheus_client import REGISTRY as registry
    return generate_latest(registry), CONTENT_TYPE_LATEST


if settings.PROMETHEUS_MULTIPROC_DIR:
    # The live-sum gauge must forget this process's sockets once it is gone.
    atexit.register(multiprocess.mark_process_dead, os.getpid())

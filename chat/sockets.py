"""This process's live sockets: which users and rooms they serve (for /health).

Plain in-memory bookkeeping, touched only from the event loop's thread.
"""

from collections import Counter

from voiceflow import metrics

_users = Counter()  # user id → live sockets of this process
_rooms = Counter()  # room slug → sockets of this process that joined it
_connections = 0


def socket_opened(user_id):
    global _connections
    _connections += 1
    _users[user_id] += 1
    metrics.SOCKETS.inc()


def socket_closed(user_id):
    global _connections
    _connections -= 1
    _users[user_id] -= 1
    if _users[user_id] <= 0:
        del _users[user_id]
    metrics.SOCKETS.dec()


def room_joined(slug):
    _rooms[slug] += 1


def room_left(slug):
    _rooms[slug] -= 1
    if _rooms[slug] <= 0:
        del _rooms[slug]


def counts():
    """{"connections", "users", "rooms"} of this process."""
    return {"connections": _connections, "users": len(_users), "rooms": len(_rooms)}

"""The status function: a pure function of timestamps and settings."""

from presence.status import (
    AWAY,
    OFFLINE,
    ONLINE,
    SocketState,
    UserPresence,
    presence_status,
)

CONF = {
    "DEAD_AFTER": 60,
    "PRESENCE_TOUCH_INTERVAL": 5,
    "AWAY_AFTER": 300,
    "OFFLINE_GRACE": 10,
}
NOW = 10_000.0


def user(*sockets, active_at=NOW - 1, announced=ONLINE, left_at=None):
    return UserPresence(1, "alice", active_at, announced, left_at, tuple(sockets))


def test_a_recently_active_user_with_a_live_socket_is_online():
    assert presence_status(user(SocketState(NOW - 20)), NOW, CONF) == ONLINE


def test_five_minutes_without_activity_is_away_even_with_heartbeats():
    idle = user(SocketState(NOW - 1), active_at=NOW - 300)
    assert presence_status(idle, NOW, CONF) == AWAY
    assert presence_status(user(SocketState(NOW), active_at=None), NOW, CONF) == AWAY


def test_away_needs_every_socket_to_say_away():
    one_hidden = user(SocketState(NOW, away=True), SocketState(NOW, away=False))
    assert presence_status(one_hidden, NOW, CONF) == ONLINE
    all_hidden = user(SocketState(NOW, away=True), SocketState(NOW, away=True))
    assert presence_status(all_hidden, NOW, CONF) == AWAY


def test_no_socket_keeps_the_announced_status_for_the_grace_period_then_offline():
    for announced in (ONLINE, AWAY):
        gone = user(announced=announced, left_at=NOW - 9.9)
        assert presence_status(gone, NOW, CONF) == announced
        assert presence_status(gone, NOW + 0.1, CONF) == OFFLINE
    assert presence_status(user(announced=OFFLINE, left_at=NOW), NOW, CONF) == OFFLINE


def test_a_socket_silent_past_the_dead_timeout_does_not_count():
    silent = user(SocketState(NOW - 65))
    assert presence_status(silent, NOW, CONF) == OFFLINE
    assert presence_status(user(SocketState(NOW - 64)), NOW, CONF) == ONLINE

from chat import sockets


def test_the_registry_counts_sockets_users_and_rooms_of_this_process():
    before = sockets.counts()
    sockets.socket_opened(901)
    sockets.socket_opened(901)
    sockets.socket_opened(902)
    sockets.room_joined("reg-a")
    sockets.room_joined("reg-a")
    sockets.room_joined("reg-b")
    assert sockets.counts() == {
        "connections": before["connections"] + 3,
        "users": before["users"] + 2,
        "rooms": before["rooms"] + 2,
    }
    sockets.room_left("reg-a")
    sockets.room_left("reg-b")
    sockets.socket_closed(901)
    assert sockets.counts()["users"] == before["users"] + 2  # 901 still has a socket
    assert sockets.counts()["rooms"] == before["rooms"] + 1  # one socket still in reg-a
    sockets.room_left("reg-a")
    sockets.socket_closed(901)
    sockets.socket_closed(902)
    assert sockets.counts() == before

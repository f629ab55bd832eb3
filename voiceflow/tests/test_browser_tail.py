"""A page that missed a quiet room's last messages shows them by the next heartbeat."""

import time

import pytest
from playwright.sync_api import expect

from .browsers import SocketProxy, screenshot
from .servers import ServerProcess

pytestmark = [pytest.mark.e2e, pytest.mark.browser, pytest.mark.one_pass("embedded")]

HEARTBEAT = 3  # seconds between the page's pings
LAST_SEQ_MAX_AGE = 1.0  # the server's default
PONG_GAP_WAIT = 0.5  # the page's wait for frames still on their way (room.js)


@pytest.fixture
def browser_server(transactional_db, lobby):
    process = ServerProcess(
        VOICEFLOW_RATE_LIMIT_MULTIPLIER="100",
        VOICEFLOW_HEARTBEAT_INTERVAL=str(HEARTBEAT),
        VOICEFLOW_LAST_SEQ_MAX_AGE=str(LAST_SEQ_MAX_AGE),
    ).start()
    yield process
    process.stop()


def post(server, token, body):
    status, reply = server.request(
        "POST", "/api/rooms/lobby/messages/", {"body": body}, token
    )
    assert status == 201, reply


def test_a_page_that_missed_a_quiet_rooms_last_messages_shows_them_within_a_heartbeat(
    people, browser_server
):
    alice = people("alice", log_in=False)
    socket = SocketProxy(alice.page)
    alice.log_in()
    page = alice.page
    bob = browser_server.register("bob")
    post(browser_server, bob, "seen live")
    expect(alice.message("seen live")).to_have_count(1)

    # Bob's next three messages reach alice's socket and are lost on the way to the
    # page (as with a stuck reader whose frames were dropped); then nobody writes.
    socket.drop("message")
    for n in (1, 2, 3):
        post(browser_server, bob, f"lost on the way {n}")
    deadline = time.monotonic() + 10
    while len(socket.dropped) < 3:
        assert time.monotonic() < deadline, "the server never sent the messages"
        page.wait_for_timeout(50)
    socket.drop(None)
    stored_at = time.monotonic()
    expect(alice.messages).to_have_count(1)

    # The first pong whose last_seq was read after the posts is at most a heartbeat
    # and the read's age away; the page then fetches what it lacks.
    bound = HEARTBEAT + LAST_SEQ_MAX_AGE + PONG_GAP_WAIT + 1.5  # + the REST fetch
    expect(alice.messages).to_have_count(4, timeout=bound * 1000)
    shown_after = time.monotonic() - stored_at
    assert alice.seqs() == [1, 2, 3, 4]
    for n in (1, 2, 3):
        expect(alice.message(f"lost on the way {n}")).to_have_attribute(
            "data-state", "sent"
        )
    print(f"missed messages shown {shown_after:.2f} s after they were stored")
    screenshot(page, "20-missed-tail-filled")

"""The chat page in a real browser: Debian's Chromium, driven by Playwright, against a
real server process. Screenshots of the main states go to artifacts/screenshots/."""

import re
import time

import pytest
from playwright.sync_api import expect

from chat.models import Message, Room

from .browsers import (
    PASSWORD,
    PHONE,
    SocketProxy,
    in_db_thread,
    in_view,
    screenshot,
    seed_history,
    set_tab_hidden,
)
from .servers import ServerProcess

pytestmark = [pytest.mark.e2e, pytest.mark.browser, pytest.mark.one_pass("embedded")]

XSS = "<img src=x onerror=alert(1)>"


def stored_count(body):
    return in_db_thread(lambda: Message.objects.filter(body=body).count())


def test_a_new_user_signs_up_and_lands_in_the_lobby(people, browser_server):
    newbie = people("newbie", log_in=False)
    page = newbie.page
    page.goto(browser_server.base + "/")
    expect(page).to_have_url(re.compile(r"/login/\?next=/$"))
    screenshot(page, "01-login")

    page.get_by_role("link", name="Create an account").click()
    expect(page.get_by_role("heading", name="Create an account")).to_be_visible()
    page.get_by_label("Username").fill("newbie")
    page.get_by_label(re.compile(r"^Password:?$")).fill("short")
    page.get_by_label("Password confirmation").fill("different")
    page.get_by_role("button", name="Sign up").click()
    expect(page.locator(".errorlist").first).to_be_visible()
    expect(page.get_by_label("Password confirmation")).to_be_focused()  # what to fix
    screenshot(page, "02-signup-errors")

    page.get_by_label(re.compile(r"^Password:?$")).fill(PASSWORD)
    page.get_by_label("Password confirmation").fill(PASSWORD)
    page.get_by_role("button", name="Sign up").click()

    expect(page).to_have_url(re.compile(r"/rooms/lobby/$"))
    expect(page.get_by_role("heading", name="Lobby")).to_be_visible()
    newbie.wait_connected()
    expect(page.locator("#connection-state")).to_contain_text("ms")  # round trip shown
    expect(page.locator("#message-empty")).to_be_visible()
    expect(page.locator("#composer")).to_be_focused()
    expect(page.get_by_text("Signed in as newbie")).to_be_visible()
    screenshot(page, "03-lobby-new-user")


def test_two_users_chat_both_ways(people):
    alice = people("alice")
    bob = people("bob", viewport=PHONE)

    alice.type_and_send("Hi Bob, are you there?")
    expect(bob.message("Hi Bob, are you there?")).to_have_attribute(
        "data-state", "sent"
    )
    bob.type_and_send("Hello Alice!\nYes, on my phone.")
    expect(alice.message("Yes, on my phone.")).to_have_count(1)
    alice.type_and_send("Great, see you at lunch.")
    alice.type_and_send("12:30 at the usual place")

    for person in (alice, bob):
        expect(person.sent_messages).to_have_count(4)
        bodies = person.page.locator("#message-list .message-body").all_inner_texts()
        assert bodies == [
            "Hi Bob, are you there?",
            "Hello Alice!\nYes, on my phone.",
            "Great, see you at lunch.",
            "12:30 at the usual place",
        ]
        assert person.seqs() == [1, 2, 3, 4]
    # Alice's two last messages are one group: one author line on screen.
    expect(alice.message("12:30")).to_have_class(re.compile(r"\bmessage--continued\b"))
    expect(alice.message("Great, see you")).not_to_have_class(re.compile("continued"))
    assert alice.message("12:30").locator(".message-meta").bounding_box()["height"] <= 1
    expect(alice.message("Great, see you").locator(".message-time")).to_have_text(
        "just now"
    )
    screenshot(alice.page, "04-conversation")
    screenshot(bob.page, "05-conversation-bob")
    # A long unbroken line wraps on the phone instead of widening the page.
    alice.type_and_send("https://example.com/" + "a-very-long-path-segment" * 12)
    expect(bob.message("a-very-long-path")).to_have_attribute("data-state", "sent")
    assert bob.page.evaluate(
        "document.documentElement.scrollWidth <= window.innerWidth"
    ), "the phone page scrolls sideways"
    alice.page.emulate_media(color_scheme="dark")
    screenshot(alice.page, "12-conversation-dark")


def test_a_message_shows_at_once_as_pending_and_turns_sent_on_ack(people):
    alice = people("alice", log_in=False)
    socket = SocketProxy(alice.page)
    alice.log_in()

    socket.hold()  # the server's answers wait, so the page has no ack yet
    alice.type_and_send("Is this thing on?")
    pending = alice.message("Is this thing on?")
    expect(pending).to_have_attribute("data-state", "pending")
    expect(pending.locator(".message-status")).to_have_text("sending…")
    expect(alice.page.locator("#composer")).to_have_value("")
    alice.page.wait_for_timeout(500)
    expect(pending).to_have_attribute("data-state", "pending")  # still: no ack yet
    assert any('"ack"' in frame for frame in socket.held)
    screenshot(alice.page, "06-pending")

    socket.release()
    expect(pending).to_have_attribute("data-state", "sent")
    expect(pending.locator(".message-status")).to_be_hidden()
    assert pending.get_attribute("data-seq") == "1"
    assert stored_count("Is this thing on?") == 1


def test_the_page_shows_typing_and_presence_frames_from_the_server(people):
    """The page's side of typing and presence, with frames as the contract has them."""
    alice = people("alice", log_in=False)
    socket = SocketProxy(alice.page)
    alice.log_in()
    page = alice.page
    member = page.locator('#member-list li[data-user="dave"]')

    socket.inject({"type": "member_joined", "room": "lobby", "user": "dave"})
    expect(member).to_have_attribute("data-status", "online")
    expect(page.locator("#member-empty")).to_be_hidden()
    expect(page.locator("#member-count")).to_have_text("(2)")
    socket.inject({"type": "typing", "room": "lobby", "user": "dave", "state": "start"})
    expect(page.locator("#typing-indicator")).to_have_text("dave is typing…")
    socket.inject({"type": "typing", "room": "lobby", "user": "erin", "state": "start"})
    expect(page.locator("#typing-indicator")).to_have_text("dave and erin are typing…")
    socket.inject({"type": "presence", "user": "dave", "status": "away"})
    expect(member).to_have_attribute("data-status", "away")
    expect(member.locator(".member__status")).to_have_text("away")
    screenshot(page, "09-typing-and-away")

    socket.inject({"type": "typing", "room": "lobby", "user": "dave", "state": "stop"})
    expect(page.locator("#typing-indicator")).to_have_text("erin is typing…")
    # A start with no stop fades by itself (the server's stop may have been lost).
    expect(page.locator("#typing-indicator")).to_have_text("", timeout=7000)
    socket.inject({"type": "member_left", "room": "lobby", "user": "dave"})
    expect(member).to_have_attribute("data-status", "offline")
    expect(page.locator("#member-count")).to_have_text("(1)")
    # Frames for another room change nothing here.
    socket.inject({"type": "typing", "room": "other", "user": "dave", "state": "start"})
    socket.inject({"type": "member_joined", "room": "other", "user": "zed"})
    page.wait_for_timeout(300)
    expect(page.locator("#typing-indicator")).to_have_text("")
    expect(page.locator('#member-list li[data-user="zed"]')).to_have_count(0)


def test_a_message_typed_while_the_server_restarts_is_delivered_once(
    people, browser_server
):
    alice = people("alice")
    bob = people("bob")
    alice.type_and_send("before the restart")
    expect(bob.message("before the restart")).to_have_count(1)

    browser_server.stop()  # SIGTERM: sockets close with 1012, pages reconnect
    for person in (alice, bob):
        expect(person.page.locator("#connection-state")).to_have_attribute(
            "data-state", re.compile("reconnecting|connecting")
        )
    alice.type_and_send("typed while the server was down")
    waiting = alice.message("typed while the server was down")
    expect(waiting).to_have_attribute("data-state", "pending")
    expect(waiting.locator(".message-status")).to_have_text("waiting for connection…")
    expect(alice.page.locator("#announcer")).to_have_text(re.compile("Connection lost"))
    screenshot(alice.page, "07-reconnecting")

    restarted = ServerProcess(
        port=browser_server.port, VOICEFLOW_RATE_LIMIT_MULTIPLIER="100"
    ).start()
    try:
        # Backoff grows while the server is down: allow for its longest wait so far.
        for person in (alice, bob):
            person.wait_connected(timeout=30_000)
        expect(alice.page.locator("#announcer")).to_have_text("Connected again.")
        expect(waiting).to_have_attribute("data-state", "sent", timeout=15_000)
        expect(bob.message("typed while the server was down")).to_have_count(1)
        bob.type_and_send("welcome back")
        expect(alice.message("welcome back")).to_have_count(1)
        # Give a stray resend time to show up, then count: exactly once everywhere.
        alice.page.wait_for_timeout(1000)
        for person in (alice, bob):
            expect(person.message("typed while the server was down")).to_have_count(1)
            expect(person.messages).to_have_count(3)
        assert stored_count("typed while the server was down") == 1
    finally:
        restarted.stop()


def test_scrolling_back_loads_older_history(people, browser_server):
    carol = browser_server.register("carol")
    seed_history("carol", 120)
    alice = people("alice")
    page = alice.page

    expect(alice.messages).to_have_count(50)  # the newest page
    expect(alice.messages.last.locator(".message-body")).to_have_text(
        "history message 120"
    )
    expect(page.locator("#history-start")).to_be_hidden()

    # Scrolling up with the mouse wheel loads page after page, back to the start.
    page.locator("#message-scroller").hover()
    deadline = time.monotonic() + 30
    while alice.messages.count() < 120:
        assert time.monotonic() < deadline, "older pages never came"
        page.mouse.wheel(0, -2000)
        page.wait_for_timeout(100)
    assert alice.seqs() == list(range(1, 121))
    expect(page.locator("#history-start")).to_be_visible()
    expect(page.locator("#load-older")).to_be_hidden()
    screenshot(page, "08-history-start", scroll="top")

    # The button does it from the keyboard, and the reader keeps their place.
    page.reload()
    alice.wait_connected()
    expect(alice.messages).to_have_count(50)
    page.locator("#load-older").focus()
    page.keyboard.press("Enter")
    expect(alice.messages).to_have_count(100)
    assert in_view(page, alice.message("history message 71")), "the view jumped"
    assert not in_view(page, alice.message("history message 21"))

    # News while scrolled back: a button offers the way down instead of yanking.
    status, _ = browser_server.request(
        "POST", "/api/rooms/lobby/messages/", {"body": "something new"}, carol
    )
    assert status == 201
    jump = page.get_by_role("button", name="New messages")
    expect(jump).to_be_visible()
    assert not in_view(page, alice.message("something new"))
    jump.click()
    expect(jump).to_be_hidden()
    expect(page.locator("#composer")).to_be_focused()
    page.wait_for_timeout(200)
    assert in_view(page, alice.message("something new"))


def test_markup_in_a_message_shows_as_text(people):
    alice = people("alice")
    bob = people("bob")
    bob.type_and_send(XSS)
    for person in (alice, bob):
        body = person.message("onerror").locator(".message-body")
        expect(body).to_have_text(XSS)
        expect(person.page.locator("#message-list img")).to_have_count(0)
    alice.page.reload()  # and from history (REST), not only live
    alice.wait_connected()
    expect(alice.message("onerror").locator(".message-body")).to_have_text(XSS)
    expect(alice.page.locator("#message-list img")).to_have_count(0)
    alice.page.wait_for_timeout(500)  # an onerror handler would have fired by now
    assert alice.dialogs == [] and bob.dialogs == []


def test_keyboard_only_use(people, browser_server):
    alice = people("alice")
    page = alice.page
    page.goto(browser_server.base + "/")  # the room list: nothing focused yet
    screenshot(page, "00-room-list")

    # The first Tab stop skips the header; the next one is the first room.
    page.keyboard.press("Tab")
    expect(page.get_by_role("link", name="Skip to content")).to_be_focused()
    page.keyboard.press("Enter")
    page.keyboard.press("Tab")
    expect(page.get_by_role("link", name=re.compile("^Lobby"))).to_be_focused()
    page.keyboard.press("Enter")

    # The room opens ready to type.
    page.wait_for_url("**/rooms/lobby/")
    alice.wait_connected()
    expect(page.locator("#composer")).to_be_focused()
    page.keyboard.type("first line")
    page.keyboard.press("Shift+Enter")
    page.keyboard.type("second line")
    expect(page.locator("#composer")).to_have_value("first line\nsecond line")
    page.keyboard.press("Enter")
    sent = alice.message("second line")
    expect(sent).to_have_attribute("data-state", "sent")
    expect(sent.locator(".message-body")).to_have_text("first line\nsecond line")
    expect(page.locator("#composer")).to_have_value("")
    expect(page.locator("#composer")).to_be_focused()

    # Enter on an empty or blank composer sends nothing.
    page.keyboard.press("Enter")
    page.keyboard.press("Shift+Enter")
    page.keyboard.press("Enter")
    page.wait_for_timeout(300)
    expect(alice.messages).to_have_count(1)

    # Tab leaves the composer for the next control; Shift+Tab comes back.
    page.keyboard.press("Tab")
    expect(page.locator("#composer")).not_to_be_focused()
    page.keyboard.press("Shift+Tab")
    expect(page.locator("#composer")).to_be_focused()


def test_unread_count_in_the_title_while_the_tab_is_hidden(people):
    alice = people("alice")
    bob = people("bob")
    expect(alice.page).to_have_title("Lobby · VoiceFlow")
    set_tab_hidden(alice.page, True)
    bob.type_and_send("one")
    bob.type_and_send("two")
    expect(alice.page).to_have_title("(2) Lobby · VoiceFlow")
    set_tab_hidden(alice.page, False)
    expect(alice.page).to_have_title("Lobby · VoiceFlow")


UNNAMED_CONTROL = re.compile(
    r"^\s*- (button|link|textbox|checkbox|combobox)\s*(\[.*)?:?$"
)


def test_every_page_names_its_parts_for_assistive_technology(people, browser_server):
    visitor = people("visitor", log_in=False)
    for path in ("/login/", "/signup/"):
        visitor.page.goto(browser_server.base + path)
        snapshot = visitor.page.locator("body").aria_snapshot()
        assert visitor.page.get_by_role("main").count() == 1
        assert visitor.page.get_by_role("heading", level=1).count() == 1
        unnamed = [
            line for line in snapshot.splitlines() if UNNAMED_CONTROL.match(line)
        ]
        assert not unnamed, f"{path}: controls without a name: {unnamed}"

    page = people("alice").page
    for role, name in [
        ("banner", None),
        ("navigation", "Site"),
        ("main", None),
        ("heading", "Lobby"),
        ("log", "Messages in Lobby"),
        ("textbox", "Message #lobby"),
        ("button", "Send"),
        ("complementary", "People here (1)"),
    ]:
        expect(page.get_by_role(role, name=name)).to_have_count(1)
    # Connection loss and refusals are announced through a status region.
    expect(page.locator("#announcer")).to_have_attribute("role", "status")
    unnamed = [
        line
        for line in page.locator("body").aria_snapshot().splitlines()
        if UNNAMED_CONTROL.match(line)
    ]
    assert not unnamed, f"room: controls without a name: {unnamed}"
    # Sending is a button that says why it is off: nothing typed yet.
    expect(page.get_by_role("button", name="Send")).to_be_disabled()


def test_a_refused_message_shows_as_failed_and_can_be_edited_and_resent(people):
    alice = people("alice")
    page = alice.page
    set_lobby_locked(True)  # the server now refuses posts with `forbidden`

    alice.type_and_send("is anyone here?")
    failed = alice.message("is anyone here?")
    expect(failed).to_have_attribute("data-state", "failed")
    expect(failed.locator(".message-status")).to_contain_text(
        "Not sent: This room is locked"
    )
    expect(page.locator("#announcer")).to_contain_text("not sent")
    screenshot(page, "13-failed")
    assert stored_count("is anyone here?") == 0

    set_lobby_locked(False)
    failed.get_by_role("button", name="Edit").click()
    expect(failed).to_have_count(0)
    expect(page.locator("#composer")).to_have_value("is anyone here?")
    expect(page.locator("#composer")).to_be_focused()
    page.keyboard.press("Enter")
    expect(alice.message("is anyone here?")).to_have_attribute("data-state", "sent")
    assert stored_count("is anyone here?") == 1


def set_lobby_locked(locked):
    in_db_thread(lambda: Room.objects.filter(slug="lobby").update(is_locked=locked))


def test_the_pages_work_under_their_content_security_policy(people, browser_server):
    watch = """
        window.cspViolations = [];
        document.addEventListener('securitypolicyviolation', (event) => {
            window.cspViolations.push(`${event.violatedDirective} ${event.blockedURI}`);
        });
    """
    alice, bob = people("alice", log_in=False), people("bob", log_in=False)
    for person in (alice, bob):
        person.context.add_init_script(watch)
        person.log_in()
    response = alice.page.goto(f"{browser_server.base}/rooms/lobby/")
    policy = response.headers["content-security-policy"]
    assert "script-src 'self'" in policy and "unsafe-inline" not in policy
    alice.wait_connected()
    alice.type_and_send("under a policy")
    expect(bob.message("under a policy")).to_be_visible()
    alice.page.goto(f"{browser_server.base}/")  # the room list and its form
    expect(alice.page.get_by_role("heading", name="Rooms")).to_be_visible()
    for person in (alice, bob):
        assert person.page.evaluate("window.cspViolations") == []
    # Console errors (a refused script, style or socket) fail the test in `people`.

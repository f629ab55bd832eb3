"""The room page's sidebar in a real browser: rooms and DMs, live unread and mention
badges, switching rooms without a reload, private rooms, mentions, notifications."""

import re

import pytest
from playwright.sync_api import expect

from chat.models import Membership, Message, Room

from .browsers import (
    DESKTOP,
    PHONE,
    SCREENSHOTS,
    SocketProxy,
    in_db_thread,
    screenshot,
    set_tab_hidden,
)

pytestmark = [pytest.mark.e2e, pytest.mark.browser, pytest.mark.one_pass("embedded")]

# Window.Notification, recorded: what the page constructs and when it asks.
NOTIFICATION_STUB = """
    window.notificationsShown = [];
    window.notificationPermissionAsked = 0;
    class RecordedNotification {
        constructor(title, options = {}) {
            const {body, tag} = options;
            window.notificationsShown.push({title, body, tag});
        }
        close() {}
    }
    RecordedNotification.permission = 'default';
    RecordedNotification.requestPermission = async () => {
        window.notificationPermissionAsked += 1;
        RecordedNotification.permission = 'granted';
        return 'granted';
    };
    window.Notification = RecordedNotification;
"""


def sidebar_item(person, slug):
    return person.page.locator(f'#sidebar li[data-slug="{slug}"]')


def sidebar_link(person, name):
    return person.page.locator("#sidebar").get_by_role("link", name=name)


def make_room(slug, name, *members, visibility="public"):
    """A room with these members (usernames), made in the database."""

    def make():
        from django.contrib.auth import get_user_model

        room = Room.objects.create(slug=slug, name=name, visibility=visibility)
        for username in members:
            user = get_user_model().objects.get(username=username)
            Membership.objects.get_or_create(user=user, room=room)
        return room

    return in_db_thread(make)


def post(server, token, slug, body):
    status, message = server.request(
        "POST", f"/api/rooms/{slug}/messages/", {"body": body}, token
    )
    assert status == 201, message
    return message


def token_of(server, username):
    status, body = server.request(
        "POST",
        "/api/auth/token/",
        {"username": username, "password": "Correct-Horse-9"},
    )
    assert status == 200, body
    return body["token"]


def phone_sidebar_screenshot(page, name):
    """The phone layout with the sidebar slid open, as artifacts/screenshots/<name>."""
    original = page.viewport_size
    page.set_viewport_size(PHONE)
    page.locator("#sidebar-toggle").click()
    expect(page.locator("#sidebar")).to_have_attribute("data-open", "true")
    page.wait_for_function(  # the slide, over
        "() => document.getElementById('sidebar').getBoundingClientRect().left === 0"
    )
    page.wait_for_timeout(100)
    page.screenshot(path=SCREENSHOTS / f"{name}-phone-sidebar.png")
    page.keyboard.press("Escape")
    page.set_viewport_size(original or DESKTOP)


def test_a_dm_between_two_people(people):
    alice = people("alice")
    bob = people("bob", viewport=PHONE)
    page = alice.page
    page.evaluate("window.pageMarker = 'same page'")

    page.get_by_text("Start a conversation").click()
    page.get_by_label("Usernames").fill("bob")
    page.get_by_role("button", name="Start", exact=True).click()
    page.wait_for_url(re.compile(r"/rooms/dm-[0-9a-f]{16}/$"))
    slug = page.url.rstrip("/").rsplit("/", 1)[1]
    expect(page.get_by_role("heading", level=1)).to_have_text("bob")
    expect(alice.page.locator("#chat")).to_have_attribute("data-joined", "true")
    expect(page.locator("#composer")).to_have_attribute("placeholder", "Message bob")
    assert page.evaluate("window.pageMarker") == "same page"  # no reload
    alice.type_and_send("hi bob, just us here")
    expect(alice.message("just us here")).to_have_attribute("data-state", "sent")

    # Bob's sidebar gets the DM at once (room_added), named after alice, unread.
    dm = sidebar_item(bob, slug)
    expect(dm).to_have_attribute("data-unread", "1")
    expect(dm.locator(".sidebar-item__name")).to_have_text("alice")
    expect(bob.message("just us here")).to_have_count(0)  # not in his lobby
    bob.page.locator("#sidebar-toggle").click()
    screenshot(alice.page, "30-dm-alice")
    bob.page.screenshot(path=SCREENSHOTS / "31-dm-bob-badge-phone-sidebar.png")
    dm.get_by_role("link").click()
    bob.page.wait_for_url(f"**/rooms/{slug}/")
    expect(bob.message("just us here")).to_have_count(1)
    expect(dm).to_have_attribute("data-unread", "0")
    bob.type_and_send("hello alice")
    expect(alice.message("hello alice")).to_have_count(1)
    screenshot(bob.page, "31-dm-bob")
    assert alice.dialogs == [] and bob.dialogs == []


def test_a_private_room_is_invisible_to_a_third_user_and_its_members_manage_it(
    people, browser_server
):
    alice = people("alice")
    bob = people("bob")
    carol = people("carol")
    page = alice.page

    page.get_by_text("Create a room").click()
    page.get_by_label("Room name").fill("Secret plans")
    page.get_by_label("Who can see it").select_option("private")
    page.get_by_role("button", name="Create room").click()
    page.wait_for_url("**/rooms/secret-plans/")
    alice.wait_connected()
    expect(sidebar_item(alice, "secret-plans")).to_have_count(1)
    panel = page.locator("#room-members")
    expect(panel).to_be_visible()
    expect(panel.locator("li.room-member")).to_have_text(["alice"])

    page.get_by_label("Add someone").fill("bob")
    panel.get_by_role("button", name="Add").click()
    expect(panel.locator("li.room-member")).to_have_text(
        [re.compile("^alice"), re.compile("^bob")]
    )
    expect(sidebar_item(bob, "secret-plans")).to_have_count(1)  # room_added, live
    alice.type_and_send("the plan is in the drawer")
    expect(sidebar_item(bob, "secret-plans")).to_have_attribute("data-unread", "1")
    screenshot(page, "32-private-room-members")

    # Carol sees no trace of it: not in her sidebar, not in the API, a 404 page.
    expect(sidebar_item(carol, "lobby")).to_have_count(1)
    expect(sidebar_item(carol, "secret-plans")).to_have_count(0)
    carol_token = token_of(browser_server, "carol")
    status, rooms = browser_server.request("GET", "/api/rooms/", None, carol_token)
    assert "secret-plans" not in [room["slug"] for room in rooms["results"]]
    response = carol.page.goto(f"{browser_server.base}/rooms/secret-plans/")
    assert response.status == 404
    carol.page.wait_for_timeout(300)  # the 404 page's own console lines are expected
    carol.errors[:] = [e for e in carol.errors if "status of 404" not in e]

    # Bob has it open; alice removes him: his page loses it at once and moves on.
    sidebar_link(bob, "Secret plans").click()
    bob.page.wait_for_url("**/rooms/secret-plans/")
    expect(bob.message("the plan is in the drawer")).to_have_count(1)
    # Only the creator (or staff) sees Remove; bob sees none.
    expect(bob.page.locator("#room-members").get_by_role("button")).to_have_text(
        ["Add"]
    )
    panel.get_by_role("button", name="Remove bob").click()
    expect(panel.locator("li.room-member")).to_have_text(["alice"])
    bob.page.wait_for_url("**/rooms/lobby/")
    expect(bob.page.locator("#error-region")).to_contain_text(
        "You are no longer a member of Secret plans."
    )
    expect(sidebar_item(bob, "secret-plans")).to_have_count(0)
    expect(bob.message("the plan is in the drawer")).to_have_count(0)
    screenshot(bob.page, "33-removed-from-private-room")


def test_a_badge_rises_live_in_an_inactive_room_and_clears_on_opening_it(
    people, browser_server
):
    alice = people("alice")
    bob_token = browser_server.register("bob")
    make_room("dev", "Dev", "alice", "bob")
    alice.page.reload()
    alice.wait_connected()
    other_tab = alice.context.new_page()  # alice's second tab, also in the lobby
    other_tab.goto(f"{browser_server.base}/rooms/lobby/")
    expect(other_tab.locator('#sidebar li[data-slug="dev"]')).to_have_count(1)

    badge = sidebar_item(alice, "dev")
    expect(badge).to_have_attribute("data-unread", "0")
    post(browser_server, bob_token, "dev", "the build is red")
    post(browser_server, bob_token, "dev", "@alice can you look?")
    expect(badge).to_have_attribute("data-unread", "2")
    expect(badge).to_have_attribute("data-mentions", "1")
    expect(badge.locator(".badge--unread")).to_contain_text("2")
    # Her own messages and deleted ones do not count.
    post(browser_server, token_of(browser_server, "alice"), "dev", "on it")
    gone = post(browser_server, bob_token, "dev", "never mind this")
    status, _ = browser_server.request(
        "DELETE", f"/api/rooms/dev/messages/{gone['id']}/", None, bob_token
    )
    assert status == 204
    alice.page.wait_for_timeout(1000)  # the deletion's recount
    expect(badge).to_have_attribute("data-unread", "2")
    second = other_tab.locator('#sidebar li[data-slug="dev"]')
    expect(second).to_have_attribute("data-unread", "2")
    screenshot(alice.page, "34-unread-badges")
    phone_sidebar_screenshot(alice.page, "34-unread-badges")

    badge.get_by_role("link").click()
    alice.page.wait_for_url("**/rooms/dev/")
    expect(alice.message("can you look?")).to_have_count(1)
    expect(badge).to_have_attribute("data-unread", "0")
    # The server tells her other tab, whose badge clears too.
    expect(second).to_have_attribute("data-unread", "0")
    expect(second).to_have_attribute("data-mentions", "0")
    last_read = in_db_thread(
        lambda: (
            Membership.objects.get(
                user__username="alice", room__slug="dev"
            ).last_read_seq
        )
    )
    assert last_read == 4
    other_tab.close()


def test_switching_rooms_keeps_the_page_and_the_socket_and_history_works(
    people, browser_server
):
    alice = people("alice")
    bob_token = browser_server.register("bob")
    make_room("dev", "Dev", "alice", "bob")
    post(browser_server, bob_token, "lobby", "lobby talk")
    post(browser_server, bob_token, "dev", "dev talk")
    sockets = []
    alice.page.on("websocket", lambda ws: sockets.append(ws))
    alice.page.reload()
    alice.wait_connected()
    page = alice.page
    page.evaluate("window.pageMarker = 'same page'")
    expect(alice.message("lobby talk")).to_have_count(1)

    sidebar_link(alice, "Dev").click()
    page.wait_for_url("**/rooms/dev/")
    alice.wait_connected()
    expect(page.get_by_role("heading", level=1)).to_have_text("Dev")
    expect(page).to_have_title("Dev · VoiceFlow")
    expect(alice.message("dev talk")).to_have_count(1)
    expect(alice.message("lobby talk")).to_have_count(0)
    expect(page.get_by_role("log", name="Messages in Dev")).to_have_count(1)
    assert page.evaluate("window.pageMarker") == "same page"

    # What is sent goes to the open room; the other room's news raises its badge
    # without entering this list.
    alice.type_and_send("sent from dev")
    expect(alice.message("sent from dev")).to_have_attribute("data-state", "sent")
    post(browser_server, bob_token, "lobby", "meanwhile in the lobby")
    expect(sidebar_item(alice, "lobby")).to_have_attribute("data-unread", "1")
    expect(alice.message("meanwhile in the lobby")).to_have_count(0)
    stored = in_db_thread(lambda: Message.objects.get(body="sent from dev").room.slug)
    assert stored == "dev"

    page.go_back()
    page.wait_for_url("**/rooms/lobby/")
    alice.wait_connected()
    expect(page.get_by_role("heading", level=1)).to_have_text("Lobby")
    expect(alice.message("meanwhile in the lobby")).to_have_count(1)
    expect(alice.message("sent from dev")).to_have_count(0)
    page.go_forward()
    page.wait_for_url("**/rooms/dev/")
    expect(alice.message("sent from dev")).to_have_count(1)
    assert page.evaluate("window.pageMarker") == "same page"
    assert len(sockets) == 1, "switching rooms opened another socket"
    screenshot(page, "35-switched-room")


def test_a_mention_of_the_reader_is_highlighted(people):
    alice = people("alice")
    bob = people("bob")
    bob.type_and_send("@alice have a look at this")
    bob.type_and_send("and this is for everyone")
    mention = alice.message("have a look")
    expect(mention).to_have_class(re.compile(r"\bmessage--mention\b"))
    expect(alice.message("for everyone")).not_to_have_class(re.compile("mention"))
    # Bob's own message mentions alice, not him.
    expect(bob.message("have a look")).not_to_have_class(re.compile("mention"))
    screenshot(alice.page, "36-mention-highlighted")


def test_a_hidden_tab_notifies_of_a_dm_or_a_mention_after_the_reader_allowed_it(
    people, browser_server
):
    alice = people("alice", log_in=False)
    alice.context.add_init_script(NOTIFICATION_STUB)
    alice.log_in()
    bob_token = browser_server.register("bob")
    page = alice.page
    assert page.evaluate("window.notificationPermissionAsked") == 0  # not at load
    button = page.get_by_role("button", name="Enable notifications")
    expect(button).to_be_visible()
    screenshot(page, "37-notifications-offer")
    button.click()
    expect(button).to_be_hidden()
    assert page.evaluate("window.notificationPermissionAsked") == 1

    post(browser_server, bob_token, "lobby", "@alice seen while looking")
    expect(alice.message("seen while looking")).to_have_count(1)
    set_tab_hidden(page, True)
    post(browser_server, bob_token, "lobby", "nothing for alice here")
    post(browser_server, bob_token, "lobby", "@alice are you there?")
    status, dm = browser_server.request(
        "POST", "/api/dms/", {"users": ["alice"]}, bob_token
    )
    assert status == 201
    expect(sidebar_item(alice, dm["slug"])).to_have_count(1)
    post(browser_server, bob_token, dm["slug"], "a word in private")
    page.wait_for_function("() => window.notificationsShown.length >= 2")
    page.wait_for_timeout(300)
    shown = page.evaluate("window.notificationsShown")
    assert [(n["title"], n["body"]) for n in shown] == [
        ("bob in Lobby", "@alice are you there?"),
        ("bob", "a word in private"),
    ]
    set_tab_hidden(page, False)


def test_messages_from_the_offline_queue_count_in_their_rooms_once(
    people, browser_server
):
    alice = people("alice", log_in=False)
    socket = SocketProxy(alice.page)
    alice.log_in()
    bob_token = browser_server.register("bob")
    make_room("dev", "Dev", "alice", "bob")
    alice.page.reload()
    alice.wait_connected()
    badge = sidebar_item(alice, "dev")
    expect(badge).to_have_attribute("data-unread", "0")

    # The live copies are lost; the offline queue (on a reconnect) brings them.
    socket.drop("message")
    first = post(browser_server, bob_token, "dev", "queued one")
    second = post(browser_server, bob_token, "dev", "queued two @alice")
    alice.page.wait_for_timeout(500)
    socket.drop(None)
    expect(badge).to_have_attribute("data-unread", "0")
    queue = {"type": "offline_messages", "messages": [first, second], "dropped": 0}
    socket.inject(queue)
    expect(badge).to_have_attribute("data-unread", "2")
    expect(badge).to_have_attribute("data-mentions", "1")
    socket.inject(queue)  # the same messages again (a rejoin's `missed`): once
    alice.page.wait_for_timeout(300)
    expect(badge).to_have_attribute("data-unread", "2")

"""Fixing and finding messages in a real browser: formatting, delete, edit, search."""

import re

import pytest
from playwright.sync_api import expect

from chat.models import Message, ModerationAction

from .browsers import (
    PHONE,
    SocketProxy,
    in_db_thread,
    in_view,
    screenshot,
    seed_history,
)

pytestmark = [pytest.mark.e2e, pytest.mark.browser, pytest.mark.one_pass("embedded")]

# Each of these must show as the very text that was sent, with nothing run.
HOSTILE_BODIES = [
    "<img src=x onerror=alert(1)>",
    "javascript:alert(1)",
    "[x](javascript:alert(1)) and [y](data:text/html,<script>alert(2)</script>)",
    "<script>alert(3)</script>",
    "**<b onmouseover=alert(4)>bold</b>** `<i>code</i>`",
]


def render(page, body):
    """format.js's renderBody(body) in the page, as HTML text to assert on."""
    return page.evaluate(
        """async (body) => {
            const src = document.querySelector('script[src*="chat/room.js"]').src;
            const { renderBody } = await import(new URL('./format.js', src));
            const box = document.createElement('div');
            box.append(renderBody(body));
            return box.innerHTML;
        }""",
        body,
    )


def test_formatting_renders_links_code_and_quotes_and_markup_stays_text(people):
    alice = people("alice")
    bob = people("bob", viewport=PHONE)
    bob.type_and_send(
        "> can someone check the build?\n"
        "**Done**, see https://example.com/builds/42 and *also* www.example.org.\n"
        "Run `make test` or:\n```\nmake test && echo **ok**\n```\nsnake_case_stays"
    )
    for body in HOSTILE_BODIES:
        bob.type_and_send(body)

    for person in (alice, bob):
        page = person.page
        expect(person.sent_messages).to_have_count(1 + len(HOSTILE_BODIES))
        formatted = person.message("can someone check").locator(".message-body")
        expect(formatted.locator("blockquote")).to_have_text(
            "can someone check the build?"
        )
        expect(formatted.locator("strong")).to_have_text("Done")
        expect(formatted.locator("em")).to_have_text("also")
        expect(formatted.locator("code.md-code")).to_have_text("make test")
        expect(formatted.locator("pre")).to_have_text("make test && echo **ok**")
        expect(formatted).to_contain_text("snake_case_stays")
        link = formatted.get_by_role("link", name="https://example.com/builds/42")
        expect(link).to_have_attribute("href", "https://example.com/builds/42")
        expect(link).to_have_attribute("rel", "noopener noreferrer nofollow")
        expect(link).to_have_attribute("target", "_blank")
        expect(formatted.get_by_role("link", name="www.example.org")).to_have_attribute(
            "href", "https://www.example.org/"
        )

        bodies = page.locator("#message-list .message-body")
        for body in HOSTILE_BODIES[:4]:
            exact = re.compile(f"^{re.escape(body)}$")
            expect(bodies.filter(has_text=exact)).to_have_count(1)
        last = person.message("onmouseover").locator(".message-body")
        expect(last.locator("strong")).to_have_text("<b onmouseover=alert(4)>bold</b>")
        expect(last.locator("code")).to_have_text("<i>code</i>")
        # Nothing from a body became an element it did not ask for, nor a bad link.
        for tag in ("img", "script", "b", "i"):
            expect(page.locator(f"#message-list .message-body {tag}")).to_have_count(0)
        hrefs = page.locator("#message-list a").evaluate_all(
            "links => links.map(a => a.getAttribute('href'))"
        )
        assert hrefs and all(re.match(r"https?://", href) for href in hrefs), hrefs

    alice.page.reload()  # from history (REST) too
    alice.wait_connected()
    expect(alice.page.locator("#message-list .message-body img")).to_have_count(0)
    expect(alice.message("can someone check").locator("a")).to_have_count(2)
    alice.page.wait_for_timeout(500)  # an onerror handler would have fired by now
    assert alice.dialogs == [] and bob.dialogs == []
    screenshot(alice.page, "20-formatting")
    screenshot(bob.page, "21-formatting-bob")


def test_the_renderer_builds_elements_and_stays_fast_on_hostile_bodies(people):
    page = people("alice").page
    assert render(page, "a *b* **c** _d_ `e` snake_case x*y") == (
        "a <em>b</em> <strong>c</strong> <em>d</em> "
        '<code class="md-code">e</code> snake_case x*y'
    )
    assert render(page, "see http://a.example/x_(y)). [z](javascript:alert(1))") == (
        'see <a href="http://a.example/x_(y)" rel="noopener noreferrer nofollow" '
        'target="_blank">http://a.example/x_(y)</a>). [z](javascript:alert(1))'
    )
    assert render(page, "<img src=x onerror=alert(1)>") == (
        "&lt;img src=x onerror=alert(1)&gt;"
    )
    assert render(page, "```\n<b>x</b>\n```") == (
        '<pre class="md-pre"><code>&lt;b&gt;x&lt;/b&gt;</code></pre>'
    )
    # Bodies at the length limit built to make a naive parser backtrack or go
    # quadratic: each renders far below anything a reader would notice.
    timings = page.evaluate(
        """async () => {
            const src = document.querySelector('script[src*="chat/room.js"]').src;
            const { renderBody } = await import(new URL('./format.js', src));
            const bodies = {
                stars: '*'.repeat(4000),
                openers: '*a'.repeat(2000),
                underscores: '_a '.repeat(1333),
                backticks: '` '.repeat(2000),
                mixed: '*_`'.repeat(1333),
                urls: 'http://'.repeat(571),
                parens: 'https://a.example/' + '('.repeat(3980) + '.',
                fences: '```\\n'.repeat(1000),
                quotes: '> **'.repeat(1000),
            };
            const out = {};
            for (const [name, body] of Object.entries(bodies)) {
                const start = performance.now();
                for (let i = 0; i < 5; i++) renderBody(body);
                out[name] = (performance.now() - start) / 5;
            }
            return out;
        }"""
    )
    slow = {name: ms for name, ms in timings.items() if ms > 100}
    assert not slow, f"pathological bodies render slowly (ms): {slow}"


def stored(body):
    return in_db_thread(
        lambda: list(Message.objects.filter(body=body).values("id", "deleted_at"))
    )


def test_an_author_deletes_their_message_and_everyone_sees_it_go(people):
    alice = people("alice")
    bob = people("bob")
    alice.type_and_send("oops, wrong room")
    bob.type_and_send("bob's own words")
    mine = alice.message("oops, wrong room")
    expect(bob.message("oops, wrong room")).to_have_attribute("data-state", "sent")
    expect(alice.message("bob's own words")).to_have_attribute("data-state", "sent")

    # Only one's own messages offer Delete.
    others = alice.message("bob's own words").locator(".message-tools button")
    expect(others).to_have_count(0)
    theirs = bob.message("oops").get_by_role("button", name="Delete message")
    expect(theirs).to_have_count(0)

    mine_id = mine.get_attribute("data-id")
    mine.hover()
    mine.get_by_role("button", name="Delete message").click()
    confirm = mine.get_by_role("button", name="Yes, delete this message")
    expect(confirm).to_be_visible()
    expect(mine.locator(".message-tools")).to_contain_text("Delete this message?")
    screenshot(alice.page, "22-delete-confirm")
    alice.page.keyboard.press("Escape")  # changed her mind: nothing happens
    expect(confirm).to_have_count(0)
    expect(mine.get_by_role("button", name="Delete message")).to_be_focused()
    alice.page.wait_for_timeout(300)
    expect(bob.message("oops, wrong room")).to_have_count(1)

    mine.get_by_role("button", name="Delete message").click()
    mine.get_by_role("button", name="Yes, delete this message").click()
    for person in (alice, bob):
        tombstone = person.page.locator(f'#message-list li[data-id="{mine_id}"]')
        expect(tombstone).to_have_class(re.compile(r"\bmessage--deleted\b"))
        expect(tombstone.locator(".message-body")).to_have_text("message deleted")
        expect(tombstone.locator(".message-tools button")).to_have_count(0)
    assert stored("oops, wrong room")[0]["deleted_at"] is not None
    screenshot(bob.page, "23-deleted-seen-by-bob")
    assert alice.dialogs == [] and bob.dialogs == []


def make_moderator(username):
    def grant():
        from django.contrib.auth import get_user_model
        from django.contrib.auth.models import Permission

        user = get_user_model().objects.get(username=username)
        user.user_permissions.add(Permission.objects.get(codename="delete_message"))

    in_db_thread(grant)


def deletions():
    return in_db_thread(
        lambda: list(
            ModerationAction.objects.values_list(
                "actor__username", "target_user__username", "reason"
            )
        )
    )


def test_a_moderator_deletes_someone_elses_message_and_the_author_sees_it_go(people):
    bob = people("bob")
    mod = people("mona")
    make_moderator("mona")
    mod.page.reload()  # the page learns what its user may do when it loads
    mod.wait_connected()
    bob.type_and_send("buy cheap watches")
    mod.type_and_send("please keep it on topic")
    spam = mod.message("buy cheap watches")
    expect(spam).to_have_attribute("data-state", "sent")
    expect(bob.message("please keep it on topic")).to_have_attribute(
        "data-state", "sent"
    )

    # Bob is no moderator: the moderator's message offers him nothing.
    theirs = bob.message("please keep it on topic").locator(".message-tools button")
    expect(theirs).to_have_count(0)
    # The moderator may delete bob's message, but edit only her own.
    spam.hover()
    expect(spam.get_by_role("button", name="Edit message")).to_have_count(0)
    spam.get_by_role("button", name="Delete message").click()
    confirm = spam.get_by_role("button", name="Yes, delete this message")
    expect(confirm).to_be_visible()
    expect(spam.locator(".message-tools")).to_contain_text("Delete this message?")
    screenshot(mod.page, "30-moderator-delete-confirm")
    spam_id = spam.get_attribute("data-id")
    confirm.click()

    for person in (mod, bob):
        tombstone = person.page.locator(f'#message-list li[data-id="{spam_id}"]')
        expect(tombstone).to_have_class(re.compile(r"\bmessage--deleted\b"))
        expect(tombstone.locator(".message-body")).to_have_text("message deleted")
        expect(tombstone.locator(".message-tools button")).to_have_count(0)
    assert stored("buy cheap watches")[0]["deleted_at"] is not None
    assert deletions() == [("mona", "bob", "by a moderator")]
    screenshot(bob.page, "31-moderator-deletion-seen-by-the-author")
    assert mod.dialogs == [] and bob.dialogs == []


def test_opening_a_room_at_a_message_shows_its_surroundings_then_pages_to_now(
    people, browser_server
):
    carol = browser_server.register("carol")
    seed_history("carol", 120)
    alice = people("alice")
    page = alice.page
    page.goto(f"{browser_server.base}/rooms/lobby/?at=40")
    alice.wait_connected()

    target = page.locator('#message-list li[data-seq="40"]')
    expect(target).to_have_class(re.compile(r"\bmessage--target\b"))
    assert alice.seqs() == list(range(15, 66))  # 25 each side of it
    assert in_view(page, target)
    expect(page.locator("#load-newer")).to_be_visible()
    expect(page.locator("#load-older")).to_be_visible()
    screenshot(page, "24-opened-at-a-message", scroll=".message--target")

    # News while reading the past is offered, not appended after message 65.
    status, _ = browser_server.request(
        "POST", "/api/rooms/lobby/messages/", {"body": "something new"}, carol
    )
    assert status == 201
    expect(page.get_by_role("button", name="New messages")).to_be_visible()
    page.wait_for_timeout(300)
    expect(alice.message("something new")).to_have_count(0)

    # Scrolling down pages forward until the present, then live messages flow again.
    page.locator("#message-scroller").hover()
    for _ in range(40):
        if alice.message("something new").count():
            break
        page.mouse.wheel(0, 3000)
        page.wait_for_timeout(150)
    expect(alice.message("something new")).to_have_count(1)
    assert alice.seqs() == list(range(15, 122))
    expect(page.locator("#load-newer")).to_be_hidden()
    status, _ = browser_server.request(
        "POST", "/api/rooms/lobby/messages/", {"body": "and live again"}, carol
    )
    expect(alice.message("and live again")).to_have_count(1)
    assert alice.seqs()[-1] == 122

    # The jump button leaves the past for the newest page at once.
    page.goto(f"{browser_server.base}/rooms/lobby/?at=10")
    alice.wait_connected()
    expect(page.locator('#message-list li[data-seq="10"]')).to_have_class(
        re.compile("message--target")
    )
    browser_server.request(
        "POST", "/api/rooms/lobby/messages/", {"body": "newest of all"}, carol
    )
    page.get_by_role("button", name="New messages").click()
    expect(alice.message("newest of all")).to_have_count(1)
    expect(alice.messages).to_have_count(50)
    assert page.evaluate("location.search") == ""


def test_an_author_edits_a_message_and_everyone_sees_the_new_text(people):
    alice = people("alice")
    bob = people("bob", viewport=PHONE)
    alice.type_and_send("see you at 5")
    bob.type_and_send("ok")
    mine = alice.message("see you at 5")
    expect(bob.message("see you at 5")).to_have_attribute("data-state", "sent")
    expect(alice.message("ok")).to_have_attribute("data-state", "sent")
    mine_id = mine.get_attribute("data-id")
    not_mine = alice.message("ok")
    expect(not_mine.get_by_role("button", name="Edit message")).to_have_count(0)

    # Esc leaves the message as it was.
    mine.hover()
    mine.get_by_role("button", name="Edit message").click()
    editor = alice.page.get_by_role("textbox", name="Edit message")
    expect(editor).to_be_focused()
    expect(editor).to_have_value("see you at 5")
    editor.fill("never sent")
    editor.press("Escape")
    expect(editor).to_have_count(0)
    expect(mine.locator(".message-body")).to_have_text("see you at 5")

    mine.hover()
    mine.get_by_role("button", name="Edit message").click()
    editor.fill("see you at *6*, not 5")
    screenshot(alice.page, "25-editing")
    editor.press("Enter")
    # The editor closes when the room's message_edited comes back (a database round
    # trip through the server process: allow for a loaded machine).
    expect(editor).to_have_count(0, timeout=10_000)
    for person in (alice, bob):
        edited = person.page.locator(f'#message-list li[data-id="{mine_id}"]')
        body = edited.locator(".message-body")
        expect(body).to_contain_text("see you at 6, not 5")
        expect(body.locator("em")).to_have_text("6")
        marker = body.locator(".message-edited")
        expect(marker).to_have_text("(edited)")
        expect(marker).to_have_attribute("title", re.compile(r"^Edited \w"))
    screenshot(bob.page, "26-edited-seen-by-bob")
    stored_body = in_db_thread(
        lambda: Message.objects.get(pk=int(mine_id)).body  # raw text, as typed
    )
    assert stored_body == "see you at *6*, not 5"

    # From history too, and once the edit window has passed, Edit is gone.
    def age_it():
        from datetime import timedelta

        from django.utils import timezone

        Message.objects.filter(pk=int(mine_id)).update(
            created_at=timezone.now() - timedelta(hours=25)
        )

    in_db_thread(age_it)
    alice.page.reload()
    alice.wait_connected()
    old = alice.page.locator(f'#message-list li[data-id="{mine_id}"]')
    expect(old.locator(".message-edited")).to_have_text("(edited)")
    expect(old.get_by_role("button", name="Delete message")).to_have_count(1)
    expect(old.get_by_role("button", name="Edit message")).to_have_count(0)


def test_search_finds_messages_across_rooms_and_jumps_to_one_in_its_history(
    people, browser_server
):
    carol = browser_server.register("carol")

    def seed():
        from django.contrib.auth import get_user_model

        from chat import services
        from chat.models import Room

        user = get_user_model().objects.get(username="carol")
        lobby = Room.objects.get(slug="lobby")
        ops = Room.objects.create(slug="ops", name="Ops")
        for n in range(1, 61):
            body = f"history message {n}"
            if n == 30:
                body = "the deploy key is in the vault"
            if n == 45:
                body = "<img src=x onerror=alert(1)> deploy notes"
            services.message_post(user=user, room=lobby, body=body)
        services.message_post(user=user, room=ops, body="deploy finished fine")

    in_db_thread(seed)
    alice = people("alice", viewport=PHONE)
    page = alice.page
    status, _ = browser_server.request(
        "POST", "/api/rooms/lobby/messages/", {"body": "who has the deploy key?"}, carol
    )
    assert status == 201

    page.get_by_role("searchbox", name="Search messages").fill("deploy")
    page.get_by_role("searchbox", name="Search messages").press("Enter")
    results = page.locator("#search-results li")
    expect(results).to_have_count(3)  # this room only, newest first
    expect(results.first).to_contain_text("who has the deploy key?")
    expect(results.nth(2)).to_contain_text("the deploy key is in the vault")
    expect(results.first.locator("mark")).to_have_text("deploy")
    expect(results.nth(1)).to_contain_text("<img src=x onerror=alert(1)> deploy notes")
    expect(page.locator("#search-results img")).to_have_count(0)
    assert page.evaluate("document.documentElement.scrollWidth <= window.innerWidth")
    screenshot(page, "27-search-results")

    page.get_by_label("Where to search").select_option("all")
    expect(results).to_have_count(4)
    expect(results.filter(has_text="#ops")).to_contain_text("deploy finished fine")
    page.get_by_role("searchbox", name="Search messages").fill("vault from:carol")
    page.get_by_role("button", name="Search", exact=True).click()
    expect(results).to_have_count(1)
    page.get_by_role("searchbox", name="Search messages").fill("vault from:alice")
    page.get_by_role("button", name="Search", exact=True).click()
    expect(page.locator("#search-status")).to_have_text("No messages found.")

    page.get_by_role("searchbox", name="Search messages").fill("deploy")
    page.get_by_role("button", name="Search", exact=True).click()
    expect(results).to_have_count(4)
    results.filter(has_text="in the vault").get_by_role("link").click()
    page.wait_for_url("**/rooms/lobby/?at=30")
    alice.wait_connected()
    target = alice.message("the deploy key is in the vault")
    expect(target).to_have_class(re.compile(r"\bmessage--target\b"))
    assert alice.seqs() == list(range(5, 56))
    assert in_view(page, target)
    screenshot(page, "28-jumped-to-a-result", scroll=".message--target")

    page.get_by_role("searchbox", name="Search messages").fill("finished")
    page.get_by_label("Where to search").select_option("all")
    page.get_by_role("button", name="Search", exact=True).click()
    results.first.get_by_role("link").click()
    page.wait_for_url("**/rooms/ops/?at=1")
    alice.wait_connected()
    expect(alice.message("deploy finished fine")).to_have_class(
        re.compile("message--target")
    )
    assert alice.dialogs == []


def test_edits_and_deletions_made_while_a_page_was_disconnected_show_after_it_rejoins(
    people, browser_server
):
    carol = browser_server.register("carol")
    bob = people("bob", log_in=False)
    socket = SocketProxy(bob.page)
    sent = []
    bob.page.on(
        "websocket",
        lambda ws: ws.on("framesent", lambda payload: sent.append(payload)),
    )
    bob.log_in()
    ids = {}
    for body in ("draft one", "to be removed", "stays as it is"):
        status, message = browser_server.request(
            "POST", "/api/rooms/lobby/messages/", {"body": body}, carol
        )
        assert status == 201
        ids[body] = message["id"]
    expect(bob.sent_messages).to_have_count(3)

    socket.hold()  # bob hears nothing of what follows
    status, _ = browser_server.request(
        "PATCH",
        f"/api/rooms/lobby/messages/{ids['draft one']}/",
        {"body": "final **one**"},
        carol,
    )
    assert status == 200
    status, _ = browser_server.request(
        "DELETE", f"/api/rooms/lobby/messages/{ids['to be removed']}/", None, carol
    )
    assert status == 204
    bob.page.wait_for_timeout(500)
    socket.held.clear()  # lost with the connection
    socket.release()
    socket.to_page.close(code=1012)  # "server restarting": the page reconnects

    edited = bob.page.locator(f'#message-list li[data-id="{ids["draft one"]}"]')
    expect(edited.locator(".message-body strong")).to_have_text("one", timeout=15_000)
    expect(edited.locator(".message-edited")).to_have_text("(edited)")
    gone = bob.page.locator(f'#message-list li[data-id="{ids["to be removed"]}"]')
    expect(gone.locator(".message-body")).to_have_text("message deleted")
    expect(bob.message("stays as it is")).to_have_count(1)
    joins = [frame for frame in sent if '"join"' in frame]
    assert len(joins) >= 2 and '"changes_since"' in joins[-1], joins


def test_a_refused_edit_keeps_the_editor_open_with_the_reason(people):
    from chat.models import Room

    alice = people("alice")
    alice.type_and_send("first try")
    mine = alice.message("first try")
    expect(mine).to_have_attribute("data-state", "sent")
    in_db_thread(lambda: Room.objects.filter(slug="lobby").update(is_locked=True))

    mine.hover()
    mine.get_by_role("button", name="Edit message").click()
    editor = alice.page.get_by_role("textbox", name="Edit message")
    editor.fill("second try")
    editor.press("Enter")
    note = mine.locator(".message-editor__note")
    expect(note).to_contain_text("locked")
    expect(editor).to_be_editable()
    expect(editor).to_have_value("second try")  # nothing typed is lost
    expect(mine.locator(".message-body")).to_have_text("first try")
    screenshot(alice.page, "29-edit-refused")

    in_db_thread(lambda: Room.objects.filter(slug="lobby").update(is_locked=False))
    editor.press("Enter")
    expect(editor).to_have_count(0)
    expect(mine).to_have_count(0)  # its body is no longer "first try"
    expect(alice.message("second try").locator(".message-edited")).to_have_count(1)


def test_a_missed_edit_is_fetched_when_the_next_change_skips_its_number(
    people, browser_server
):
    carol = browser_server.register("carol")
    bob = people("bob", log_in=False)
    socket = SocketProxy(bob.page)
    bob.log_in()
    ids = []
    for body in ("first draft", "second draft"):
        status, message = browser_server.request(
            "POST", "/api/rooms/lobby/messages/", {"body": body}, carol
        )
        assert status == 201
        ids.append(message["id"])
    expect(bob.sent_messages).to_have_count(2)

    def edit(message_id, body):
        status, _ = browser_server.request(
            "PATCH", f"/api/rooms/lobby/messages/{message_id}/", {"body": body}, carol
        )
        assert status == 200

    socket.drop("message_edited")  # the first edit never reaches bob
    edit(ids[0], "first, final")
    for _ in range(100):  # until the proxy has swallowed it
        if socket.dropped:
            break
        bob.page.wait_for_timeout(50)
    assert len(socket.dropped) == 1
    socket.drop(None)
    edit(ids[1], "second, final")  # its change skips one: bob asks for what he missed
    expect(bob.message("second, final")).to_have_count(1)
    expect(bob.message("first, final")).to_have_count(1)
    expect(bob.message("first draft")).to_have_count(0)

"""Presence and typing in a real browser: member dots and the typing line."""

import pytest
from playwright.sync_api import expect

from .browsers import PHONE, screenshot, set_tab_hidden

pytestmark = [pytest.mark.e2e, pytest.mark.browser, pytest.mark.one_pass("embedded")]

# The contract's offline grace is 10 s, and events may lag by a sweep interval.
OFFLINE_WITHIN_MS = 40_000


def dot(person, user):
    return person.page.locator(f'#member-list li[data-user="{user}"]')


def test_typing_shows_while_someone_types_and_goes_when_they_send_or_leave_the_box(
    people,
):
    alice = people("alice")
    bob = people("bob")
    indicator = alice.page.locator("#typing-indicator")

    bob.page.locator("#composer").press_sequentially(
        "I am typing a long mess", delay=50
    )
    expect(indicator).to_have_text("bob is typing…")
    expect(bob.page.locator("#typing-indicator")).to_have_text("")  # not about yourself
    screenshot(alice.page, "09-typing")
    bob.page.locator("#composer").press("Enter")
    expect(indicator).to_have_text("", timeout=2000)

    bob.page.locator("#composer").press_sequentially("another one", delay=50)
    expect(indicator).to_have_text("bob is typing…")
    bob.page.locator("#composer").blur()  # `stop` on blur, well before any expiry
    expect(indicator).to_have_text("", timeout=2000)

    # Typing and then pausing: the server stops it 3 s after the last `start`.
    bob.page.locator("#composer").focus()
    bob.page.locator("#composer").press_sequentially(" more", delay=50)
    expect(indicator).to_have_text("bob is typing…")
    expect(indicator).to_have_text("", timeout=4500)


def test_member_dots_follow_the_other_user_hiding_and_closing_the_tab(people):
    alice = people("alice")
    bob = people("bob", viewport=PHONE)

    expect(dot(alice, "bob")).to_have_attribute("data-status", "online")
    expect(dot(bob, "alice")).to_have_attribute("data-status", "online")
    expect(dot(alice, "alice")).to_have_attribute("data-status", "online")
    expect(alice.page.locator("#member-empty")).to_be_hidden()

    set_tab_hidden(bob.page, True)  # the page reports `status: away`
    expect(dot(alice, "bob")).to_have_attribute("data-status", "away")
    expect(dot(alice, "bob").locator(".member__status")).to_have_text("away")
    screenshot(alice.page, "10-member-away")
    set_tab_hidden(bob.page, False)
    expect(dot(alice, "bob")).to_have_attribute("data-status", "online")

    bob.page.close()  # the tab is closed: offline once the grace period is over
    expect(dot(alice, "bob")).to_have_attribute(
        "data-status", "offline", timeout=OFFLINE_WITHIN_MS
    )
    screenshot(alice.page, "11-member-offline")


def test_someone_arriving_later_appears_in_the_member_list(people):
    alice = people("alice")
    expect(alice.page.locator("#member-empty")).to_be_visible()
    people("carol")
    expect(dot(alice, "carol")).to_have_attribute("data-status", "online")
    expect(alice.page.locator("#member-empty")).to_be_hidden()

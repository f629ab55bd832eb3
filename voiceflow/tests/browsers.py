"""Debian's Chromium driven by Playwright, for the browser tests of the chat page."""

import json
import re
from pathlib import Path

from asgiref.sync import SyncToAsync

from .servers import ROOT

CHROMIUM = Path("/usr/bin/chromium")
CHROMIUM_ARGS = [
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
]
DESKTOP = {"width": 1280, "height": 800}
PHONE = {"width": 390, "height": 844}
SCREENSHOTS = ROOT / "artifacts" / "screenshots"
PASSWORD = "Correct-Horse-9"
EXPECTED_CONSOLE_ERRORS = re.compile(
    r"WebSocket connection to .* failed|net::ERR_CONNECTION_REFUSED"
)


def in_db_thread(fn, *args, **kwargs):
    """Run ORM code off the main thread.

    Playwright's sync API keeps an event loop running on the main thread, where Django
    refuses synchronous queries. This is the thread behind database_sync_to_async, whose
    connection the session fixture closes at the end of the run.
    """
    return SyncToAsync.single_thread_executor.submit(fn, *args, **kwargs).result()


def seed_history(username, count):
    """`username` posts "history message 1" … "history message <count>" in the lobby."""

    def seed():
        from django.contrib.auth import get_user_model

        from chat import services
        from chat.models import Room

        user = get_user_model().objects.get(username=username)
        lobby = Room.objects.get(slug="lobby")
        for n in range(1, count + 1):
            services.message_post(user=user, room=lobby, body=f"history message {n}")

    in_db_thread(seed)


def in_view(page, locator):
    """True if `locator` is inside the message scroller's visible area."""
    box = locator.bounding_box()
    frame = page.locator("#message-scroller").bounding_box()
    return (
        frame["y"] <= box["y"]
        and box["y"] + box["height"] <= frame["y"] + frame["height"]
    )


def launch(playwright):
    """Debian's Chromium (never a downloaded build) with a fresh, throwaway profile.

    launch() gives Chromium a new temporary user-data dir and deletes it on close; each
    browser context in it has its own cookies and storage, like a private window.
    """
    assert CHROMIUM.exists(), (
        f"{CHROMIUM} is missing: the browser tests need Debian's chromium "
        "(apt-get install -y chromium; .ci/run installs it)"
    )
    return playwright.chromium.launch(
        executable_path=str(CHROMIUM), args=CHROMIUM_ARGS, headless=True
    )


def screenshot(page, name, scroll="bottom"):
    """Save the page at desktop and phone sizes as artifacts/screenshots/<name>-*.png.

    After each resize the message list is scrolled to `scroll` ("bottom", "top", or
    a CSS selector of a message to centre), as a reader of that state would see it.
    """
    SCREENSHOTS.mkdir(parents=True, exist_ok=True)
    original = page.viewport_size
    for label, size in (("desktop", DESKTOP), ("phone", PHONE)):
        page.set_viewport_size(size)
        page.evaluate(
            """(scroll) => {
                const scroller = document.getElementById('message-scroller');
                if (!scroller) return;
                const ends = {top: 0, bottom: scroller.scrollHeight};
                if (scroll in ends) scroller.scrollTop = ends[scroll];
                else document.querySelector(scroll)?.scrollIntoView({block: 'center'});
            }""",
            scroll,
        )
        page.wait_for_timeout(150)  # let layout settle
        page.screenshot(path=SCREENSHOTS / f"{name}-{label}.png")
    page.set_viewport_size(original)


def set_tab_hidden(page, hidden):
    """Make the page believe its tab was hidden or shown again.

    Headless Chromium keeps every page visible (minimising or switching tabs does not
    change document.visibilityState), so the tests emulate the switch exactly as the
    page sees it: the two properties and a visibilitychange event.
    """
    page.evaluate(
        """(hidden) => {
            const state = hidden ? 'hidden' : 'visible';
            const define = (name, get) =>
                Object.defineProperty(document, name, {configurable: true, get});
            define('hidden', () => hidden);
            define('visibilityState', () => state);
            document.dispatchEvent(new Event('visibilitychange'));
        }""",
        hidden,
    )


def _frame_type(frame):
    try:
        return json.loads(frame).get("type")
    except (ValueError, TypeError, AttributeError):
        return None


class SocketProxy:
    """A pass-through proxy for a page's chat socket (Playwright's WebSocket routing).

    `hold()` keeps the server's frames from the page until `release()`; `drop(type)`
    loses the server's frames of that type (kept in `dropped`) until `drop(None)`;
    `inject(frame)` hands the page a frame as if the server had sent it.
    """

    def __init__(self, page):
        self.holding = False
        self.held = []
        self.dropping = None
        self.dropped = []
        self.to_page = None
        page.route_web_socket(re.compile(r"/ws/chat/$"), self._route)

    def _route(self, ws):
        server = ws.connect_to_server()
        self.to_page = ws
        server.on_message(self._from_server)
        ws.on_message(lambda frame: server.send(frame))

    def _from_server(self, frame):
        if self.dropping and _frame_type(frame) == self.dropping:
            self.dropped.append(frame)
        elif self.holding:
            self.held.append(frame)
        else:
            self.to_page.send(frame)

    def hold(self):
        self.holding = True

    def drop(self, frame_type):
        self.dropping = frame_type

    def release(self):
        self.holding = False
        held, self.held = self.held, []
        for frame in held:
            self.to_page.send(frame)

    def inject(self, frame):
        self.to_page.send(json.dumps(frame))


class Person:
    """One user in their own browser context (own cookies and storage)."""

    def __init__(self, browser, server, name, viewport=DESKTOP):
        self.name = name
        self.server = server
        self.context = browser.new_context(viewport=viewport)
        self.page = self.context.new_page()
        self.errors = []
        self.dialogs = []
        self.page.on("pageerror", lambda error: self.errors.append(str(error)))
        self.page.on("console", self._on_console)
        self.page.on("dialog", self._on_dialog)

    def _on_console(self, message):
        # A socket refused while the server restarts is logged by the browser itself.
        if message.type == "error" and not EXPECTED_CONSOLE_ERRORS.search(message.text):
            self.errors.append(f"console: {message.text}")

    def _on_dialog(self, dialog):
        self.dialogs.append(dialog.message)
        dialog.dismiss()

    def log_in(self, room="lobby"):
        """Register over the API, log in through the page's form, open `room`."""
        self.server.register(self.name, PASSWORD)
        page = self.page
        page.goto(f"{self.server.base}/login/?next=/rooms/{room}/")
        page.get_by_label("Username").fill(self.name)
        page.get_by_label("Password").fill(PASSWORD)
        page.get_by_role("button", name="Log in").click()
        page.wait_for_url(f"**/rooms/{room}/")
        self.wait_connected()
        return self

    def wait_connected(self, timeout=10_000):
        """Until the socket is up and has joined the room (sends go out only then)."""
        from playwright.sync_api import expect

        expect(self.page.locator("#connection-state")).to_have_attribute(
            "data-state", "connected", timeout=timeout
        )
        expect(self.page.locator("#chat")).to_have_attribute(
            "data-joined", "true", timeout=timeout
        )

    @property
    def messages(self):
        return self.page.locator("#message-list li.message")

    def seqs(self):
        """The seq of every message in the list, top to bottom."""
        return self.messages.evaluate_all("els => els.map(e => Number(e.dataset.seq))")

    @property
    def sent_messages(self):
        return self.page.locator("#message-list li.message[data-state=sent]")

    def message(self, body):
        return self.page.locator("#message-list li.message").filter(
            has=self.page.locator(".message-body", has_text=body)
        )

    def type_and_send(self, body):
        composer = self.page.locator("#composer")
        composer.fill(body)
        composer.press("Enter")

    def close(self):
        self.context.close()

"""Helpers for the browser tests: the servers of tests/server, and small waits."""

import importlib.util
import sys
import time
import uuid
from pathlib import Path

from playwright.sync_api import Page, expect

ROOT = Path(__file__).resolve().parents[2]
HEARTBEAT_S = 1.0  # the server's keepalive interval in these tests


def _server_helpers():
    """Upstream and Server from tests/server/conftest.py, loaded under a name of their own."""
    path = ROOT / "tests" / "server" / "conftest.py"
    if str(path.parent) not in sys.path:
        sys.path.insert(0, str(path.parent))  # it imports its neighbour `wire`
    spec = importlib.util.spec_from_file_location("stopwire_server_helpers", path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


helpers = _server_helpers()
Upstream, Server, free_port = helpers.Upstream, helpers.Server, helpers.free_port


def marker() -> str:
    """A unique word that finds one provider record."""
    return uuid.uuid4().hex[:12]


def tokens_after(record: dict, moment: float) -> int:
    """How many tokens the provider produced after `moment` (monotonic)."""
    return sum(t > moment for t in record["token_times"])


def wait_until(predicate, timeout: float = 5.0, interval: float = 0.02):
    """Poll `predicate` until it returns something truthy; that value, or None."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = predicate()
        if value:
            return value
        time.sleep(interval)
    return None


def open_page(context, url: str):
    """A new tab on the chat page; uncaught script errors collect in `page.errors`."""
    page = context.new_page()
    page.errors = []
    page.on("pageerror", lambda error: page.errors.append(str(error)))
    page.goto(url)
    page.get_by_role("textbox", name="Message").wait_for()
    return page


def send(page: Page, text: str) -> None:
    """Type `text` in the composer and send it."""
    box = page.get_by_role("textbox", name="Message")
    box.fill(text)
    box.press("Enter")


def answer(page: Page):
    """The newest answer on the page."""
    return page.locator("#messages .message.assistant").last


def answer_text(page: Page) -> str:
    return answer(page).locator(".message-text").text_content()


def wait_words(page: Page, count: int) -> None:
    """Wait until the newest answer shows at least `count` words."""
    page.wait_for_function(
        """count => {
            const texts = document.querySelectorAll("#messages .assistant .message-text");
            const last = texts[texts.length - 1];
            return last && last.textContent.split(/\\s+/).filter(Boolean).length >= count;
        }""",
        arg=count,
    )


def expect_idle(page: Page) -> None:
    """The composer is back: Send, not Stop."""
    expect(page.get_by_role("button", name="Send")).to_be_visible()
    expect(page.get_by_role("button", name="Stop generating")).to_have_count(0)

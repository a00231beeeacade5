"""Real Chromium (Debian's, never a downloaded one) against a real gunicorn and the demo provider.

Without /usr/bin/chromium these tests skip locally and fail under CI=true.
"""

import os
from pathlib import Path

import pytest
from support import HEARTBEAT_S, ROOT, Server, Upstream, open_page

CHROMIUM = Path("/usr/bin/chromium")
CHROMIUM_ARGS = [
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
]


@pytest.fixture(scope="session")
def chromium_path() -> str:
    """Debian's Chromium; a skip locally, a failure in CI, when it is missing."""
    if not CHROMIUM.exists():
        message = f"{CHROMIUM} is missing: `apt-get install -y chromium` runs these tests"
        if os.environ.get("CI") == "true":
            pytest.fail(message)
        pytest.skip(message)
    return str(CHROMIUM)


@pytest.fixture(scope="session")
def browser(chromium_path):
    """One headless Chromium for the session."""
    try:
        from playwright.sync_api import sync_playwright
    except ImportError:
        if os.environ.get("CI") == "true":
            pytest.fail("playwright is not installed: pip install -e '.[test]'")
        pytest.skip("playwright is not installed: pip install -e '.[test]'")
    with sync_playwright() as playwright:
        chromium = playwright.chromium.launch(executable_path=chromium_path, args=CHROMIUM_ARGS)
        yield chromium
        chromium.close()


@pytest.fixture(scope="session")
def upstream():
    """The demo provider: 60 tokens, 30 ms apart, unless a message's directive says otherwise
    (a continued answer gets these: its last user turn is the server's instruction)."""
    (ROOT / ".pytest_cache").mkdir(exist_ok=True)
    server = Upstream("--gap", "0.03", "--ttft", "0.05", "--tokens", "60")
    yield server
    server.close()


@pytest.fixture(scope="session")
def server(upstream, tmp_path_factory):
    """gunicorn with two gevent workers (a stop may land on either), heartbeat every 1 s."""
    database = tmp_path_factory.mktemp("store") / "stopwire.sqlite3"
    process = Server(
        upstream.url,
        workers=2,
        STOPWIRE_HEARTBEAT_S=str(HEARTBEAT_S),
        STOPWIRE_DATABASE=str(database),
    )
    yield process
    process.close()


@pytest.fixture
def context(browser):
    """A fresh browser profile per test."""
    context = browser.new_context(viewport={"width": 1200, "height": 800})
    yield context
    context.close()


@pytest.fixture
def page(context, server):
    """The chat page on the session's server; no script error may happen on it."""
    page = open_page(context, server.url)
    yield page
    assert page.errors == []

"""The chat page in real Chromium against a real gunicorn and the demo provider.

The provider's own records (when its client left, when each token was made) are the
evidence that a stop really stopped the model; bounds are generous for slow CI machines.
"""

import os
import re
import time
from pathlib import Path

import requests
from playwright.sync_api import Page, expect
from support import (
    HEARTBEAT_S,
    ROOT,
    Server,
    Upstream,
    answer,
    answer_text,
    expect_idle,
    free_port,
    marker,
    open_page,
    send,
    tokens_after,
    wait_until,
    wait_words,
)

SOON_S = 1.0  # "closed at once", generously
# At most the one token that may already be on the wire when Stop lands (40 ms apart here,
# a stop takes milliseconds); the provider's own record is checked for more in each test.
RECEIPT = re.compile(r"^provider closed \d+(\.\d)? ms after Stop · (0 tokens|1 token) after Stop$")
LONG = "[demo tokens=400 gap=0.04]"  # about 16 s: always still running when we stop it
SHORT = "[demo tokens=6 gap=0.01]"


def stop_and_check(page: Page, upstream: Upstream, prompt: str, stop) -> tuple[str, dict]:
    """Stop the running answer with `stop()`; check the page and the provider's record.

    Returns the text shown and the stop request's JSON body.
    """
    with page.expect_request(lambda r: r.url.endswith("/stop")) as stop_request:
        stopped_at = time.monotonic()
        stop()
    message = answer(page)
    expect(message.locator(".badge")).to_have_text("Stopped")
    expect_idle(page)
    expect(message.locator(".message-detail")).to_have_text(RECEIPT)
    shown = answer_text(page)
    body = stop_request.value.post_data_json
    assert body == {"seen_chars": len(shown)}
    time.sleep(0.3)
    assert answer_text(page) == shown, "text kept arriving after Stop"
    record = upstream.ended(prompt)
    assert record["ended"] == "client_closed"
    assert record["client_closed_at"] - stopped_at < SOON_S
    # The receipt says the provider made nothing after the stop reached the server, and
    # its own record agrees (how many it made in the click's few ms is bench/'s business).
    assert tokens_after(record, record["client_closed_at"]) == 0
    return shown, body


def test_the_page_is_served_with_a_strict_content_policy(server):
    page = requests.get(server.url, timeout=5)
    assert page.status_code == 200
    assert page.headers["content-type"].startswith("text/html")
    policy = page.headers["content-security-policy"]
    assert "script-src 'self'" in policy and "unsafe-inline" not in policy
    assert '<script type="module" src="static/app.js">' in page.text
    for name in ("app.js", "api.js", "view.js", "style.css"):
        assert requests.get(f"{server.url}/static/{name}", timeout=5).status_code == 200
    assert requests.get(f"{server.url}/healthz", timeout=5).json()["status"] == "ok"


SPLIT_READER = """async (wire) => {
    const { readEvents } = await import("./static/api.js");
    const bytes = new TextEncoder().encode(wire);
    const read = async (cuts) => {
        const stream = new ReadableStream({
            start(controller) {
                let from = 0;
                for (const cut of [...cuts, bytes.length]) {
                    controller.enqueue(bytes.slice(from, cut));
                    from = cut;
                }
                controller.close();
            },
        });
        const events = [];
        for await (const event of readEvents(stream)) events.push(event);
        return JSON.stringify(events);
    };
    const whole = await read([]);
    const differ = [];
    for (let i = 1; i < bytes.length; i++) {
        if ((await read([i])) !== whole) differ.push(i);
    }
    return { whole: JSON.parse(whole), differ };
}"""


def test_the_event_reader_agrees_at_every_split_point(page):
    wire = (
        'event: meta\r\ndata: {"a":1}\r\n\r\n: keepalive\n\n'
        'id: 7\nevent: token\ndata: {"text":"h\u00e9 \u2603"}\n\n'
        "event: done\rdata: one\rdata: two\r\rdata: cut off"
    )
    result = page.evaluate(SPLIT_READER, wire)
    assert result["whole"] == [
        {"type": "meta", "data": '{"a":1}', "id": None},
        {"type": "token", "data": '{"text":"h\u00e9 \u2603"}', "id": "7"},
        {"type": "done", "data": "one\ntwo", "id": "7"},
    ]
    assert result["differ"] == []


def test_enter_sends_and_shift_enter_starts_a_new_line(page, upstream):
    prompt = marker()
    box = page.get_by_role("textbox", name="Message")
    box.type(f"{prompt} line one")
    box.press("Shift+Enter")
    box.type(f"line two {SHORT}")
    assert box.input_value() == f"{prompt} line one\nline two {SHORT}"
    expect(page.locator("#messages .message")).to_have_count(0)
    box.press("Enter")
    user = page.locator("#messages .message.user").last
    expect(user.locator(".message-text")).to_have_text(f"{prompt} line one\nline two {SHORT}")
    expect(box).to_have_value("")
    expect(answer(page)).to_have_attribute("data-status", "complete")
    assert len(answer_text(page).split()) == 6
    expect(answer(page).locator(".message-state")).to_be_hidden()
    expect_idle(page)
    assert upstream.ended(prompt)["ended"] == "complete"


def test_stop_keeps_the_text_and_closes_the_provider_at_once(page, upstream):
    prompt = marker()
    send(page, f"Why should Stop really stop the model? ({prompt}) {LONG}")
    stop_button = page.get_by_role("button", name="Stop generating")
    expect(stop_button).to_be_visible()
    wait_words(page, 24)
    shown, _ = stop_and_check(page, upstream, prompt, stop_button.click)
    assert shown.startswith("A stop button should stop the model")
    message = answer(page)
    expect(message.get_by_role("button", name="Regenerate")).to_be_visible()
    expect(message.get_by_role("button", name="Continue")).to_be_visible()
    expect(message.get_by_role("button", name="Retry")).to_be_hidden()
    page.screenshot(path=ROOT / ".pytest_cache" / "stopped.png")
    if os.environ.get("STOPWIRE_SCREENSHOT"):  # how docs/stopped.png is made
        Path(os.environ["STOPWIRE_SCREENSHOT"]).parent.mkdir(parents=True, exist_ok=True)
        page.screenshot(path=os.environ["STOPWIRE_SCREENSHOT"])


def test_escape_stops(page, upstream):
    prompt = marker()
    send(page, f"{prompt} {LONG}")
    wait_words(page, 5)
    stop_and_check(page, upstream, prompt, lambda: page.keyboard.press("Escape"))


def test_keyboard_only_tab_to_stop_and_press_enter(page, upstream):
    prompt = marker()
    send(page, f"{prompt} {LONG}")
    wait_words(page, 3)
    page.keyboard.press("Tab")
    focused = page.evaluate("document.activeElement.textContent")
    assert focused == "Stop generating"
    stop_and_check(page, upstream, prompt, lambda: page.keyboard.press("Enter"))


def test_stop_while_the_provider_is_silent_acts_at_once(page, upstream):
    prompt = marker()
    send(page, f"{prompt} [demo ttft=30]")
    upstream.record(prompt)
    expect(answer(page)).to_have_attribute("data-status", "streaming")
    time.sleep(0.3)  # the meta event has arrived; the provider says nothing for 30 s
    shown, body = stop_and_check(
        page, upstream, prompt, page.get_by_role("button", name="Stop generating").click
    )
    assert shown == "" and body == {"seen_chars": 0}
    assert upstream.ended(prompt)["tokens_sent"] == 0


def test_a_stale_stop_never_aborts_the_next_answer(page, upstream):
    first, second = marker(), marker()
    send(page, f"{first} {LONG}")
    wait_words(page, 3)
    page.keyboard.press("Escape")
    send(page, f"{second} {LONG}")
    expect(page.locator("#messages .message.assistant")).to_have_count(2)
    wait_words(page, 3)
    time.sleep(1.5)  # past the first run's abort timer
    expect(answer(page)).to_have_attribute("data-status", "streaming")
    assert upstream.record(second)["ended"] == "streaming"
    assert upstream.ended(first)["ended"] == "client_closed"
    page.keyboard.press("Escape")
    assert upstream.ended(second)["ended"] == "client_closed"
    # Both stopped; only the latest answer can be regenerated or continued.
    expect(answer(page).locator(".message-detail")).to_have_text(RECEIPT)
    older, latest = page.locator("#messages .message.assistant").all()
    expect(latest.get_by_role("button", name="Continue")).to_be_visible()
    expect(older.locator(".message-actions")).to_be_hidden()
    page.reload()
    expect(page.locator("#messages .message.assistant")).to_have_count(2)
    older, latest = page.locator("#messages .message.assistant").all()
    expect(latest.get_by_role("button", name="Regenerate")).to_be_visible()
    expect(older.locator(".message-actions")).to_be_hidden()
    expect(older.locator(".badge")).to_have_text("Stopped")


def test_a_provider_error_shows_its_message_and_retry_asks_again(page, upstream):
    prompt = marker()
    send(page, f"{prompt} [demo status=429]")
    message = answer(page)
    expect(message.locator(".badge")).to_have_text("Error")
    expect(message.locator(".message-detail")).to_contain_text("provider returned HTTP 429")
    expect_idle(page)
    retry = message.get_by_role("button", name="Retry")
    expect(retry).to_be_visible()
    retry.click()
    assert wait_until(lambda: len(upstream.streams(prompt)) == 2), "Retry sent nothing"
    expect(message.locator(".badge")).to_have_text("Error")
    expect(page.locator("#messages .message.assistant")).to_have_count(1)


def test_an_error_mid_stream_keeps_the_partial_text(page, upstream):
    prompt = marker()
    send(page, f"{prompt} [demo fail=drop:5 gap=0.01]")
    message = answer(page)
    expect(message.locator(".badge")).to_have_text("Error")
    expect(message.locator(".message-detail")).to_contain_text("dropped mid-stream")
    assert len(answer_text(page).split()) == 5
    expect(message.get_by_role("button", name="Retry")).to_be_visible()


def test_retry_succeeds_once_the_provider_is_back(context, tmp_path):
    port = free_port()
    down = Server(
        f"http://127.0.0.1:{port}/v1", workers=1, STOPWIRE_DATABASE=str(tmp_path / "s.sqlite3")
    )
    provider = None
    try:
        page = open_page(context, down.url)
        prompt = marker()
        send(page, f"{prompt} {SHORT}")
        message = answer(page)
        expect(message.locator(".badge")).to_have_text("Error")
        expect(message.locator(".message-detail")).to_contain_text("cannot reach the provider")
        provider = Upstream("--port", str(port))
        message.get_by_role("button", name="Retry").click()
        expect(message).to_have_attribute("data-status", "complete")
        expect(message.locator(".message-state")).to_be_hidden()
        assert len(answer_text(page).split()) == 6
        assert provider.ended(prompt)["ended"] == "complete"
        assert page.errors == []
    finally:
        if provider is not None:
            provider.close()
        down.close()


def test_over_the_running_answers_cap_the_page_says_so(context, upstream, tmp_path):
    capped = Server(
        upstream.url,
        workers=1,
        STOPWIRE_MAX_ACTIVE_PER_USER="1",
        STOPWIRE_DATABASE=str(tmp_path / "s.sqlite3"),
    )
    try:
        first = open_page(context, capped.url)
        send(first, f"{marker()} {LONG}")
        wait_words(first, 3)
        second = open_page(context, capped.url)  # the same browser: the same identity
        send(second, f"{marker()} {SHORT}")
        message = answer(second)
        expect(message.locator(".badge")).to_have_text("Error")
        expect(message.locator(".message-detail")).to_contain_text("the limit is 1")
        expect(message.get_by_role("button", name="Retry")).to_be_visible()
        assert first.errors == [] and second.errors == []
    finally:
        capped.close()


def test_model_output_is_shown_as_text_and_runs_nothing(page, upstream):
    prompt = marker()
    payload = (
        '<img src=x onerror="window.__pwned=1"><script>window.__pwned=2</script>'
        f"<b>bold</b> {prompt}"
    )
    send(page, f"{payload} [demo echo gap=0.005]")
    expect(answer(page)).to_have_attribute("data-status", "complete")
    assert answer_text(page) == payload
    user = page.locator("#messages .message.user").last.locator(".message-text")
    assert user.text_content() == f"{payload} [demo echo gap=0.005]"
    time.sleep(0.3)  # an injected image would have failed to load by now
    assert page.evaluate("window.__pwned") is None
    assert page.locator("#messages img, #messages script, #messages b").count() == 0
    assert page.locator("#conversations img, #conversations script").count() == 0
    expect(page.locator("#chat-title")).to_contain_text("<img src=x")


def test_closing_the_tab_stops_the_provider(context, server, upstream):
    page = open_page(context, server.url)
    prompt = marker()
    send(page, f"{prompt} {LONG}")
    wait_words(page, 5)
    conversation_id = page.evaluate("location.hash").removeprefix("#/c/")
    shown_before_close = answer_text(page)
    closed_at = time.monotonic()
    page.close()
    record = upstream.ended(prompt)
    assert record["ended"] == "client_closed"
    assert record["client_closed_at"] - closed_at < SOON_S
    assert tokens_after(record, closed_at + SOON_S) == 0

    def saved():
        url = f"{server.url}/api/conversations/{conversation_id}"
        # The browser's own identity cookie: the conversation is only its owner's.
        message = context.request.get(url).json()["messages"][-1]
        return message if message["status"] != "streaming" else None

    message = wait_until(saved)
    assert message is not None and message["status"] == "stopped"
    # The pagehide beacon landed: the stop is the user's, cut to what the page showed.
    assert message["reason"] == "user_stop" and message["receipt"]["signal"] == "user_stop"
    assert message["content"].startswith(shown_before_close)


def test_going_offline_keeps_the_answer_for_the_grace_and_stop_still_stops_it(
    context, page, upstream
):
    # Provider silent after 3 tokens: only heartbeats would cross the wire. Offline is a
    # blip, not a departure: the page asked for a grace, so the answer runs on meanwhile.
    prompt = marker()
    send(page, f"{prompt} [demo tokens=50 gap=0.02 silence=3:30]")
    wait_words(page, 3)
    context.set_offline(True)
    message = answer(page)
    expect(message.locator(".message-detail")).to_contain_text("Reconnecting")
    time.sleep(HEARTBEAT_S + SOON_S)  # long enough for the server to see the socket gone
    assert upstream.record(prompt)["ended"] == "streaming"
    context.set_offline(False)
    # A Stop while it reconnects (or just after) is immediate all the same.
    stopped_at = time.monotonic()
    page.get_by_role("button", name="Stop generating").click()
    record = upstream.ended(prompt)
    assert record["ended"] == "client_closed"
    assert record["client_closed_at"] - stopped_at < SOON_S
    assert record["tokens_sent"] == 3
    expect(message.locator(".badge")).to_have_text("Stopped")
    expect_idle(page)


def test_regenerate_after_stop_replaces_the_answer(page, upstream):
    prompt = marker()
    send(page, f"{prompt} [demo tokens=40 gap=0.04]")
    wait_words(page, 4)
    shown, _ = stop_and_check(page, upstream, prompt, lambda: page.keyboard.press("Escape"))
    message = answer(page)
    with page.expect_request(lambda r: r.url.endswith("/regenerate")):
        message.get_by_role("button", name="Regenerate").click()
    expect(message).to_have_attribute("data-status", "complete", timeout=10_000)
    expect(message.locator(".message-state")).to_be_hidden()
    text = answer_text(page)
    assert len(text.split()) == 40 and text.startswith(shown)
    expect(page.locator("#messages .message.assistant")).to_have_count(1)
    page.reload()
    expect(answer(page).locator(".message-text")).to_have_text(text)
    expect(answer(page)).to_have_attribute("data-status", "complete")


def test_continue_after_stop_appends_to_the_answer(page, upstream):
    prompt = marker()
    send(page, f"{prompt} [demo tokens=30 gap=0.04]")
    wait_words(page, 4)
    shown, _ = stop_and_check(page, upstream, prompt, lambda: page.keyboard.press("Escape"))
    message = answer(page)
    with page.expect_request(lambda r: r.url.endswith("/continue")):
        message.get_by_role("button", name="Continue").click()
    expect(message).to_have_attribute("data-status", "complete", timeout=10_000)
    text = answer_text(page)
    assert text.startswith(shown) and len(text) > len(shown)
    page.reload()
    expect(answer(page).locator(".message-text")).to_have_text(text)


def test_stop_during_continue_keeps_exactly_what_was_shown(page, upstream):
    prompt = marker()
    send(page, f"{prompt} {LONG}")
    wait_words(page, 4)
    page.keyboard.press("Escape")
    expect(answer(page).locator(".message-detail")).to_have_text(RECEIPT)
    first = answer_text(page)
    answer(page).get_by_role("button", name="Continue").click()
    wait_words(page, len(first.split()) + 4)
    with page.expect_request(lambda r: r.url.endswith("/stop")) as stop_request:
        page.keyboard.press("Escape")
    expect(answer(page).locator(".message-detail")).to_have_text(RECEIPT)
    shown = answer_text(page)
    # seen_chars counts what this generation showed, after the text it continued.
    assert stop_request.value.post_data_json == {"seen_chars": len(shown) - len(first)}
    page.reload()
    expect(answer(page).locator(".message-text")).to_have_text(shown)


def test_reload_restores_the_stopped_message_as_it_was_shown(page, upstream):
    prompt = marker()
    send(page, f"{prompt} {LONG}")
    wait_words(page, 6)
    shown, _ = stop_and_check(page, upstream, prompt, lambda: page.keyboard.press("Escape"))
    receipt = answer(page).locator(".message-detail").text_content()
    assert page.evaluate("location.hash").startswith("#/c/conv_")
    page.reload()
    message = answer(page)
    expect(message.locator(".message-text")).to_have_text(shown)
    expect(message.locator(".badge")).to_have_text("Stopped")
    expect(message.locator(".message-detail")).to_have_text(receipt)
    expect(message.get_by_role("button", name="Continue")).to_be_visible()
    user = page.locator("#messages .message.user .message-text")
    expect(user).to_have_text(f"{prompt} {LONG}")
    current = page.locator("#conversations [aria-current=page]")
    expect(current).to_have_text(f"{prompt} {LONG}")


def test_reload_mid_stream_keeps_what_was_shown_as_stopped(page, upstream):
    prompt = marker()
    send(page, f"{prompt} {LONG}")
    wait_words(page, 5)
    before = answer_text(page)
    page.reload()
    message = answer(page)
    expect(message.locator(".badge")).to_have_text("Stopped", timeout=10_000)
    assert message.locator(".message-text").text_content().startswith(before)
    assert upstream.ended(prompt)["ended"] == "client_closed"


def test_server_shutdown_marks_the_answer_interrupted(context, upstream, tmp_path):
    server = Server(upstream.url, workers=1, STOPWIRE_DATABASE=str(tmp_path / "s.sqlite3"))
    try:
        page = open_page(context, server.url)
        prompt = marker()
        send(page, f"{prompt} {LONG}")
        wait_words(page, 5)
    finally:
        server.close()  # SIGTERM: a graceful shutdown, as in a deploy
    message = answer(page)
    expect(message.locator(".badge")).to_have_text("Interrupted")
    expect(message.locator(".message-detail")).to_have_text(
        "The server shut down before this answer finished."
    )
    assert len(answer_text(page).split()) >= 5
    expect_idle(page)
    assert upstream.ended(prompt)["ended"] == "client_closed"
    assert page.errors == []


def test_conversations_new_switch_and_delete(page, upstream):
    alpha, beta = f"alpha {marker()} {SHORT}", f"beta {marker()} {SHORT}"
    send(page, alpha)
    expect(answer(page)).to_have_attribute("data-status", "complete")
    expect(page.locator("#conversations [aria-current=page]")).to_have_text(alpha)
    page.get_by_role("button", name="New chat").click()
    expect(page.locator("#messages .message")).to_have_count(0)
    expect(page.get_by_role("heading", level=1)).to_have_text("New chat")
    send(page, beta)
    expect(answer(page)).to_have_attribute("data-status", "complete")
    listed = page.locator("#conversations .conversation-open")
    expect(listed.first).to_have_text(beta)
    expect(listed.nth(1)).to_have_text(alpha)

    page.get_by_role("button", name=alpha, exact=True).click()
    expect(page.locator("#messages .message.user .message-text")).to_have_text([alpha])
    expect(page.get_by_role("heading", level=1)).to_have_text(alpha)

    page.get_by_role("button", name=f"Delete “{beta}”").click()
    expect(page.get_by_role("button", name=beta, exact=True)).to_have_count(0)
    expect(page.locator("#messages .message.user .message-text")).to_have_text([alpha])
    page.get_by_role("button", name=f"Delete “{alpha}”").click()
    expect(page.locator("#messages .message")).to_have_count(0)
    page.reload()
    expect(page.get_by_role("button", name=alpha, exact=True)).to_have_count(0)
    expect(page.get_by_role("button", name=beta, exact=True)).to_have_count(0)


def _background(page: Page) -> tuple[int, ...]:
    color = page.evaluate("getComputedStyle(document.body).backgroundColor")
    return tuple(int(n) for n in re.findall(r"\d+", color)[:3])


def test_narrow_phone_in_dark_mode(browser, server, upstream):
    context = browser.new_context(
        viewport={"width": 360, "height": 740}, color_scheme="dark", is_mobile=True
    )
    try:
        page = open_page(context, server.url)
        assert sum(_background(page)) < 3 * 60, "dark mode is not dark"
        assert page.evaluate("document.documentElement.scrollWidth") <= 360
        expect(page.locator("#sidebar")).to_be_hidden()
        toggle = page.get_by_role("button", name="Conversations")
        toggle.click()
        expect(toggle).to_have_attribute("aria-expanded", "true")
        expect(page.get_by_role("button", name="New chat")).to_be_visible()
        toggle.click()
        prompt = marker()
        send(page, f"{prompt} {LONG}")
        wait_words(page, 20)
        page.get_by_role("button", name="Stop generating").click()
        expect(answer(page).locator(".message-detail")).to_have_text(RECEIPT)
        assert page.evaluate("document.documentElement.scrollWidth") <= 360
        expect(page.get_by_role("button", name="Send")).to_be_in_viewport()
        assert page.errors == []
    finally:
        context.close()


def test_wide_desktop_in_light_mode(browser, server):
    context = browser.new_context(viewport={"width": 1600, "height": 900}, color_scheme="light")
    try:
        page = open_page(context, server.url)
        assert sum(_background(page)) > 3 * 200, "light mode is not light"
        expect(page.locator("#sidebar")).to_be_visible()
        expect(page.get_by_role("button", name="Conversations")).to_be_hidden()
        assert page.evaluate("document.documentElement.scrollWidth") <= 1600
    finally:
        context.close()

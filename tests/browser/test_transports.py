"""Streams that drop and come back, in real Chromium against a real gunicorn.

EventSource on `POST /api/generations` (its close stops the provider), and the chat page
through a proxy (cutter.py) that resets every connection on demand: the page shows
"Reconnecting…", comes back with the last event id and continues the same message
exactly; Stop while it reconnects stops the provider at once; past the server's grace
it shows the answer stopped and saved. The demo provider's records are the evidence.
"""

import re
import time

import pytest
from cutter import Cutter
from playwright.sync_api import Page, expect
from support import (
    HEARTBEAT_S,
    Server,
    answer,
    answer_text,
    expect_idle,
    marker,
    open_page,
    send,
    tokens_after,
    wait_until,
    wait_words,
)

SOON_S = 1.0  # "closed at once", generously
SHORT_GRACE_S = 2.0  # STOPWIRE_MAX_RESUME_GRACE_S of the short-grace server
RECONNECTING = "Reconnecting…"
RECEIPT = re.compile(r"^provider closed \d+(\.\d)? ms after Stop · (0 tokens|1 token) after Stop$")
LONG = "[demo tokens=400 gap=0.04]"  # about 16 s: always still running when cut or stopped
EVENTS = b"/events"  # in the request line of a reconnect (GET .../events)


def saved_answer(page: Page, server: Server, conversation_id: str = "") -> dict:
    """The latest answer of the page's conversation as the server saved it, once it no
    longer streams."""
    conversation_id = conversation_id or page.evaluate("location.hash").removeprefix("#/c/")
    url = f"{server.url}/api/conversations/{conversation_id}"  # around the proxy

    def settled():
        # The browser's own identity cookie: the conversation is only its owner's.
        message = page.context.request.get(url).json()["messages"][-1]
        return message if message["status"] != "streaming" else None

    message = wait_until(settled)
    assert message is not None, "the answer is still streaming"
    return message


def event_requests(page: Page) -> list[tuple[float, str | None]]:
    """(when, Last-Event-ID) of every view of an answer's events the page makes from now
    on: its first (the page starts an answer with POST /api/generations, then views it
    after its meta, id 0), then each reconnect."""
    seen: list[tuple[float, str | None]] = []

    def note(request) -> None:
        if "/events" in request.url:
            seen.append((time.monotonic(), request.headers.get("last-event-id")))

    page.on("request", note)
    return seen


@pytest.fixture
def cutter(server):
    proxy = Cutter(server.port)
    yield proxy
    proxy.close()


@pytest.fixture(scope="module")
def short_server(upstream, tmp_path_factory):
    """A server that keeps an answer at most SHORT_GRACE_S for its viewer to come back."""
    process = Server(
        upstream.url,
        workers=2,
        STOPWIRE_HEARTBEAT_S=str(HEARTBEAT_S),
        STOPWIRE_MAX_RESUME_GRACE_S=str(SHORT_GRACE_S),
        STOPWIRE_DATABASE=str(tmp_path_factory.mktemp("short") / "stopwire.sqlite3"),
    )
    yield process
    process.close()


EVENT_SOURCE = """async ({ content, tokens }) => {
    const created = await fetch("api/generations", {
        method: "POST",
        headers: { "Content-Type": "application/json" },
        body: JSON.stringify({ content }),
    });
    const body = await created.json();
    const es = new EventSource(body.events_url);
    const events = [];
    try {
        await new Promise((resolve, reject) => {
            setTimeout(() => reject(new Error(`only ${events.length} events in 10 s`)), 10000);
            es.onerror = () => reject(new Error(`EventSource error, state ${es.readyState}`));
            for (const type of ["meta", "heartbeat", "token"]) {
                es.addEventListener(type, (event) => {
                    events.push({ type, id: event.lastEventId, data: JSON.parse(event.data) });
                    if (events.filter((e) => e.type === "token").length >= tokens) resolve();
                });
            }
        });
    } finally {
        es.close();
    }
    return { status: created.status, body, events };
}"""


def test_closing_an_event_source_stops_the_provider(page, server, upstream):
    prompt = marker()
    result = page.evaluate(EVENT_SOURCE, {"content": f"{prompt} {LONG}", "tokens": 4})
    closed_at = time.monotonic()
    assert result["status"] == 201
    events = result["events"]
    assert (events[0]["type"], events[0]["id"]) == ("meta", "0")
    assert events[0]["data"]["generation_id"] == result["body"]["generation_id"]
    sent = 0
    for event in events[1:]:
        if event["type"] == "token":
            sent += len(event["data"]["text"])
        assert event["id"] == str(sent)  # every id: the characters of the answer sent so far
    record = upstream.ended(prompt)
    assert record["ended"] == "client_closed"
    assert record["client_closed_at"] - closed_at < SOON_S
    assert tokens_after(record, record["client_closed_at"]) == 0
    assert tokens_after(record, closed_at + SOON_S) == 0
    message = saved_answer(page, server, result["body"]["conversation_id"])
    assert (message["status"], message["reason"]) == ("stopped", "client_disconnect")
    shown = "".join(e["data"]["text"] for e in events if e["type"] == "token")
    assert message["content"].startswith(shown)


def test_a_cut_shows_reconnecting_then_the_same_message_continues_exactly(
    context, server, upstream, cutter
):
    page = open_page(context, cutter.url)
    reconnects = event_requests(page)
    prompt = marker()
    send(page, f"{prompt} [demo tokens=120 gap=0.03]")
    wait_words(page, 10)
    cutter.refuse(EVENTS)  # reconnects fail until "Reconnecting…" has been seen
    assert cutter.cut() >= 1
    message = answer(page)
    expect(message.locator(".message-detail")).to_have_text(RECONNECTING)
    expect(message).to_have_attribute("data-status", "streaming")
    expect(page.get_by_role("button", name="Stop generating")).to_be_visible()
    assert upstream.record(prompt)["ended"] == "streaming"  # the grace keeps it running
    cutter.admit()
    expect(message).to_have_attribute("data-status", "complete", timeout=15_000)
    expect(message.locator(".message-state")).to_be_hidden()
    expect_idle(page)
    text = answer_text(page)
    saved = saved_answer(page, server)
    assert saved["status"] == "complete"
    assert text == saved["content"]  # no duplicate, no gap
    assert len(text.split()) == 120
    assert upstream.ended(prompt)["ended"] == "complete"
    first, *again = reconnects
    assert first[1] == "0", reconnects
    assert again, "the page never came back"
    assert all(last and last.isdigit() and int(last) > 0 for _, last in again), reconnects
    page.reload()  # and what is saved is what was shown
    expect(answer(page).locator(".message-text")).to_have_text(text)
    assert page.errors == []


def test_stop_while_reconnecting_stops_the_provider_at_once(context, server, upstream, cutter):
    page = open_page(context, cutter.url)
    reconnects = event_requests(page)
    prompt = marker()
    send(page, f"{prompt} {LONG}")
    wait_words(page, 5)
    cutter.refuse(EVENTS)  # the way back stays shut; the stop request gets through
    cutter.cut()
    message = answer(page)
    expect(message.locator(".message-detail")).to_have_text(RECONNECTING)
    assert wait_until(lambda: cutter.refused >= 1), "no reconnect was tried"
    assert upstream.record(prompt)["ended"] == "streaming"
    shown = answer_text(page)
    with page.expect_request(lambda r: r.url.endswith("/stop"), timeout=5_000) as stop_request:
        stopped_at = time.monotonic()
        page.get_by_role("button", name="Stop generating").click()
    record = upstream.ended(prompt)
    assert record["ended"] == "client_closed"
    assert record["client_closed_at"] - stopped_at < SOON_S
    assert tokens_after(record, record["client_closed_at"]) == 0
    assert stop_request.value.post_data_json == {"seen_chars": len(shown)}
    expect(message.locator(".badge")).to_have_text("Stopped")
    expect(message.locator(".message-detail")).to_have_text(RECEIPT)
    expect_idle(page)
    saved = saved_answer(page, server)
    assert (saved["status"], saved["reason"]) == ("stopped", "user_stop")
    assert saved["content"] == shown == answer_text(page)
    # The reconnect under way was called off: none follows (the longest wait is 2 s).
    tried = len(reconnects)
    time.sleep(2.2)
    assert len(reconnects) == tried and answer_text(page) == shown
    assert page.errors == []


def test_stop_after_it_ended_while_away_shows_the_whole_answer(context, server, upstream, cutter):
    page = open_page(context, cutter.url)
    prompt = marker()
    send(page, f"{prompt} [demo tokens=30 gap=0.03]")
    wait_words(page, 3)
    cutter.refuse(EVENTS)
    cutter.cut()
    message = answer(page)
    expect(message.locator(".message-detail")).to_have_text(RECONNECTING)
    assert upstream.ended(prompt)["ended"] == "complete"  # it ended while the page was away
    # Right after a failed reconnect the next is a second or more away: Stop comes first.
    refused = cutter.refused
    assert wait_until(lambda: cutter.refused > refused), "no reconnect was tried"
    cutter.admit()
    with page.expect_response(lambda r: r.url.endswith("/stop"), timeout=5_000) as stopped:
        page.get_by_role("button", name="Stop generating").click()
    assert stopped.value.json()["status"] == "complete"
    # The stop lost the race: complete, and the page fetches the rest it missed.
    expect(message).to_have_attribute("data-status", "complete")
    expect(message.locator(".message-text")).to_have_text(saved_answer(page, server)["content"])
    assert len(answer_text(page).split()) == 30
    expect_idle(page)
    assert page.errors == []


def test_back_after_the_grace_shows_the_answer_stopped_and_saved(context, short_server, upstream):
    cutter = Cutter(short_server.port)
    try:
        page = open_page(context, cutter.url)
        prompt = marker()
        send(page, f"{prompt} {LONG}")  # asks for 20 s; this server grants SHORT_GRACE_S
        wait_words(page, 5)
        cutter.refuse()  # the network is gone: every new connection is reset
        left = time.monotonic()
        cutter.cut()
        message = answer(page)
        expect(message.locator(".message-detail")).to_have_text(RECONNECTING)
        record = upstream.ended(prompt, timeout=SHORT_GRACE_S + 5)
        assert record["ended"] == "client_closed"
        assert SHORT_GRACE_S - 0.2 < record["client_closed_at"] - left < SHORT_GRACE_S + SOON_S
        expect(message.locator(".message-detail")).to_have_text(RECONNECTING)
        cutter.admit()  # back, too late: the page gets what was written, then `done`
        expect(message.locator(".badge")).to_have_text("Stopped", timeout=5_000)
        expect(message.locator(".message-detail")).to_contain_text("saved")
        expect_idle(page)
        saved = saved_answer(page, short_server)
        assert (saved["status"], saved["reason"]) == ("stopped", "client_disconnect")
        assert answer_text(page) == saved["content"]
        expect(message.get_by_role("button", name="Continue")).to_be_visible()
        assert page.errors == []
    finally:
        cutter.close()


def test_offline_then_online_continues_the_same_message(context, server, upstream):
    page = open_page(context, server.url)
    prompt = marker()
    send(page, f"{prompt} [demo tokens=100 gap=0.03]")
    wait_words(page, 5)
    context.set_offline(True)
    message = answer(page)
    try:
        expect(message.locator(".message-detail")).to_have_text(RECONNECTING)
        time.sleep(0.6)  # a reconnect or two fails while offline
        assert upstream.record(prompt)["ended"] == "streaming"
    finally:
        context.set_offline(False)
    expect(message).to_have_attribute("data-status", "complete", timeout=15_000)
    text = answer_text(page)
    saved = saved_answer(page, server)
    assert saved["status"] == "complete" and text == saved["content"]
    assert len(text.split()) == 100
    assert page.errors == []

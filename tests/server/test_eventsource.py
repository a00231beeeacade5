"""The EventSource transport and resume, end to end: real gunicorn, real sockets.

`POST /api/generations` then `GET events_url`, as `new EventSource(events_url)` does,
and a viewer that comes back with `Last-Event-ID` after its connection was cut.
"""

import time
import uuid

import pytest
import requests
from conftest import Server
from wire import AUTH, Connection, Event, connection_to, pinned

SOON_S = 1.0  # "closed at once", generously


def marker() -> str:
    return uuid.uuid4().hex[:12]


def create(base_url: str, body: dict) -> dict:
    response = requests.post(f"{base_url}/api/generations", json=body, headers=AUTH, timeout=5)
    assert response.status_code == 201, response.text
    return response.json()


def view(conn: Connection, created: dict, last_id: str | None = None) -> None:
    conn.get(created["events_url"], {"Last-Event-ID": last_id} if last_id else None)
    assert conn.status == 200, (conn.status, conn._raw[:300])
    assert conn.headers["content-type"].startswith("text/event-stream")


def text_of(events: list[Event]) -> str:
    return "".join(e.data["text"] for e in events if e.event == "token")


def answer_row(server: Server, generation_id: str) -> dict:
    rows = server.query(
        "SELECT content, status, reason FROM messages WHERE generation_id = ?", (generation_id,)
    )
    return rows[0]


def settled_row(server: Server, generation_id: str, timeout: float = 5.0) -> dict:
    """The answer's row once it no longer streams."""
    deadline = time.monotonic() + timeout
    while (row := answer_row(server, generation_id))["status"] == "streaming":
        assert time.monotonic() < deadline, "still streaming"
        time.sleep(0.02)
    return row


def test_create_then_view_streams_with_ids_retry_and_named_heartbeats(server, upstream):
    prompt = marker()
    created = create(server.url, {"content": f"{prompt} [demo tokens=3 gap=0.5]"})
    assert set(created) == {"generation_id", "conversation_id", "message_id", "events_url"}
    assert created["events_url"] == f"/api/generations/{created['generation_id']}/events"
    time.sleep(0.2)
    assert upstream.streams(prompt) == []  # nothing asked of the provider before a viewer
    conn = Connection(server.url)
    view(conn, created)
    hint, *events = conn.events()
    assert hint.retry == 1000 and hint.event is None  # how soon to reconnect, first
    assert events[0].event == "meta" and events[0].id == "0"
    assert events[-1].event == "done" and events[-1].id == "end"
    assert events[-1].data["status"] == "complete"
    assert any(e.event == "heartbeat" and e.id is not None for e in events)  # 0.3 s heartbeat
    assert all(e.id is not None for e in events)
    text = text_of(events)
    assert len(text.split()) == 3
    assert answer_row(server, created["generation_id"])["content"] == text
    assert upstream.ended(prompt)["ended"] == "complete"


@pytest.mark.parametrize("close", ["close_fin", "close_rst"])
def test_closing_the_event_stream_closes_the_provider(server, upstream, close):
    prompt = marker()
    created = create(server.url, {"content": f"{prompt} [demo tokens=300 gap=0.02]"})
    conn = Connection(server.url)
    view(conn, created)
    conn.events(tokens=3)
    closed_at = getattr(conn, close)()
    record = upstream.ended(prompt)
    assert record["ended"] == "client_closed"
    assert record["client_closed_at"] - closed_at < SOON_S
    row = answer_row(server, created["generation_id"])
    assert (row["status"], row["reason"]) == ("stopped", "client_disconnect")


def test_without_a_grace_a_cut_stops_it_and_a_return_replays_then_done(server, upstream):
    prompt = marker()
    created = create(server.url, {"content": f"{prompt} [demo tokens=300 gap=0.02]"})
    conn = Connection(server.url)
    view(conn, created)
    first = conn.events(tokens=3)
    time.sleep(0.2)  # more arrives, unread: lost with the connection
    conn.close_rst()
    saved = settled_row(server, created["generation_id"])["content"]
    for _ in range(2):  # whichever worker it lands on: the one that ran it, or not
        back = Connection(server.url)
        view(back, created, first[-1].id)
        rest = back.events()
        assert [e.event for e in rest] == [None, "token", "done"]  # retry:, the rest, done
        assert rest[-1].data["reason"] == "client_disconnect"
        assert text_of(first) + text_of(rest) == saved
    # EventSource reconnects on its own even after `done`: it is told to stop.
    again = Connection(server.url)
    again.get(created["events_url"], {"Last-Event-ID": "end"})
    assert again.status == 204


def test_within_the_grace_a_viewer_resumes_on_the_other_worker_exactly(server, upstream):
    prompt = marker()
    body = {"content": f"{prompt} [demo tokens=60 gap=0.03]", "resume_grace_s": 10}
    created = create(server.url, body)
    first_pid, conn = pinned(server.url)
    view(conn, created)
    first = conn.events(tokens=5)
    conn.close_rst()
    time.sleep(0.2)  # it streams on, nobody watching
    assert upstream.record(prompt)["ended"] == "streaming"
    other = connection_to(server.url, lambda pid: pid != first_pid)
    view(other, created, first[-1].id)
    rest = other.events()
    assert rest[-1].event == "done" and rest[-1].data["status"] == "complete"
    assert all(e.event != "meta" for e in rest)  # it had meta already
    text = text_of(first) + text_of(rest)
    assert len(text.split()) == 60
    assert text == answer_row(server, created["generation_id"])["content"]


def test_nobody_back_within_the_grace_stops_it_as_a_disconnect(server, upstream):
    prompt = marker()
    body = {"content": f"{prompt} [demo tokens=400 gap=0.02]", "resume_grace_s": 1}
    created = create(server.url, body)
    conn = Connection(server.url)
    view(conn, created)
    conn.events(tokens=2)
    left = conn.close_rst()
    record = upstream.ended(prompt, timeout=5)
    assert 0.9 <= record["client_closed_at"] - left < 1 + SOON_S
    row = answer_row(server, created["generation_id"])
    assert (row["status"], row["reason"]) == ("stopped", "client_disconnect")


def test_a_stop_while_nobody_views_is_immediate_whatever_the_grace(server, upstream):
    prompt = marker()
    body = {"content": f"{prompt} [demo tokens=400 gap=0.02]", "resume_grace_s": 30}
    created = create(server.url, body)
    conn = Connection(server.url)
    view(conn, created)
    first = conn.events(tokens=2)
    conn.close_rst()
    time.sleep(0.2)
    stop_url = f"{server.url}/api/generations/{created['generation_id']}/stop"
    asked = time.monotonic()
    summary = requests.post(stop_url, json={"seen_chars": len(text_of(first))}, headers=AUTH)
    assert summary.status_code == 200 and summary.json()["reason"] == "user_stop"
    assert upstream.ended(prompt)["client_closed_at"] - asked < SOON_S
    assert answer_row(server, created["generation_id"])["content"] == text_of(first)


def test_an_unviewed_generation_is_dropped_without_a_provider_call(upstream):
    server = Server(upstream.url, STOPWIRE_ATTACH_TIMEOUT_S="0.3", STOPWIRE_FLUSH_S="0.2")
    try:
        prompt = marker()
        created = create(server.url, {"content": f"{prompt} [demo tokens=5]"})
        time.sleep(1.0)
        row = answer_row(server, created["generation_id"])
        assert (row["status"], row["reason"], row["content"]) == (
            "stopped",
            "client_disconnect",
            "",
        )
        late = Connection(server.url)
        view(late, created)
        events = late.events()
        assert [e.event for e in events] == [None, "meta", "done"]  # retry: first
        assert upstream.streams(prompt) == []
    finally:
        server.close()


def test_discard_saves_a_stopped_answer_empty(server, upstream):
    prompt = marker()
    body = {"content": f"{prompt} [demo tokens=300 gap=0.02]", "on_stop": "discard"}
    created = create(server.url, body)
    conn = Connection(server.url)
    view(conn, created)
    conn.events(tokens=3)
    stop_url = f"{server.url}/api/generations/{created['generation_id']}/stop"
    summary = requests.post(stop_url, json={}, headers=AUTH).json()
    assert summary["status"] == "stopped" and summary["receipt"]["discarded"] is True
    conn.events()
    assert answer_row(server, created["generation_id"])["content"] == ""


@pytest.mark.parametrize(
    ("body", "message"),
    [
        ({"content": "x", "resume_grace_s": -1}, "resume_grace_s"),
        ({"content": "x", "resume_grace_s": "5"}, "resume_grace_s"),
        ({"content": "x", "resume_grace_s": True}, "resume_grace_s"),
        ({"content": "x", "on_stop": "drop"}, "on_stop"),
    ],
)
def test_bad_options_are_clear_400s(server, body, message):
    for path in ("/api/generations", "/api/chat"):
        response = requests.post(f"{server.url}{path}", json=body, headers=AUTH, timeout=5)
        assert response.status_code == 400
        assert message in response.json()["error"]["message"]


def test_bad_or_foreign_ids_are_refused(server):
    created = create(server.url, {"content": f"{marker()} [demo tokens=2]"})
    url = f"{server.url}{created['events_url']}"
    bad = requests.get(url, headers={**AUTH, "Last-Event-ID": "x1"}, timeout=5)
    assert bad.status_code == 400
    unknown = requests.get(f"{server.url}/api/generations/gen_nope/events", headers=AUTH)
    assert unknown.status_code == 404
    assert requests.get(url, timeout=5).status_code == 401  # no identity
    requests.get(url, headers=AUTH, timeout=5)  # view it, so nothing is left pending


def test_a_stop_before_anyone_viewed_it_drops_it_unasked(server, upstream):
    prompt = marker()
    created = create(server.url, {"content": f"{prompt} [demo tokens=5]"})
    stop_url = f"{server.url}/api/generations/{created['generation_id']}/stop"
    summary = requests.post(stop_url, json={}, headers=AUTH, timeout=5)
    assert summary.status_code == 200
    assert (summary.json()["status"], summary.json()["reason"]) == ("stopped", "user_stop")
    late = Connection(server.url)
    view(late, created)
    assert [e.event for e in late.events()] == [None, "meta", "done"]
    assert upstream.streams(prompt) == []

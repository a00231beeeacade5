"""Conversations survive Stop: what the user saw is saved, and the next turn builds on it.

Real gunicorn (2 gevent workers), the demo provider, the store on SQLite and on PostgreSQL."""

import time
import uuid

import pytest
import requests
from conftest import Server
from wire import AUTH, Connection, open_stream


def marker() -> str:
    return uuid.uuid4().hex[:12]


def conversation(server, conversation_id: str) -> dict:
    response = requests.get(
        f"{server.url}/api/conversations/{conversation_id}", headers=AUTH, timeout=10
    )
    assert response.status_code == 200, response.text
    return response.json()


def answer(server, conn) -> dict:
    """The saved assistant message a stream wrote."""
    saved = conversation(server, conn.meta["conversation_id"])
    return next(m for m in saved["messages"] if m["id"] == conn.meta["message_id"])


def streamed_text(events) -> str:
    return "".join(e.data["text"] for e in events if e.event == "token")


def ended_answer(server: Server, conn: Connection, timeout: float = 5.0) -> dict:
    """The saved answer once it is no longer streaming (or, past the deadline, as it is)."""
    deadline = time.monotonic() + timeout
    while (saved := answer(server, conn))["status"] == "streaming" and time.monotonic() < deadline:
        time.sleep(0.05)
    return saved


def stop(server, conn, **body) -> dict:
    url = f"{server.url}/api/generations/{conn.meta['generation_id']}/stop"
    response = requests.post(url, json=body, headers=AUTH, timeout=10)
    assert response.status_code == 200, response.text
    return response.json()


def test_a_complete_answer_is_saved_with_usage(server):
    conn = open_stream(server.url, f"{marker()} [demo tokens=6 gap=0]")
    events = conn.events()
    saved = conversation(server, conn.meta["conversation_id"])
    user, assistant = saved["messages"]
    assert user["role"] == "user" and user["status"] == "complete"
    assert saved["title"] == user["content"][:60]
    assert assistant["content"] == streamed_text(events)
    assert (assistant["status"], assistant["reason"]) == ("complete", None)
    assert assistant["usage"]["completion_tokens"] == 6
    assert assistant["usage"]["estimated"] is False
    assert assistant["generation_id"] == conn.meta["generation_id"]
    assert assistant["model"] == "stopwire-demo"


def test_stop_saves_exactly_what_the_user_saw(server):
    conn = open_stream(server.url, f"{marker()} [demo tokens=300 gap=0.02]")
    seen = streamed_text(conn.events(tokens=6))
    summary = stop(server, conn, seen_chars=len(seen) - 3)
    assert (summary["status"], summary["reason"]) == ("stopped", "user_stop")
    saved = answer(server, conn)
    assert saved["content"] == seen[:-3]
    assert (saved["status"], saved["reason"]) == ("stopped", "user_stop")
    assert saved["receipt"]["signal"] == "user_stop"
    assert saved["usage"]["estimated"] is True
    conn.events()


def test_seen_chars_beyond_the_text_keeps_only_what_was_generated(server):
    conn = open_stream(server.url, f"{marker()} [demo tokens=50 gap=0.01 silence=4:30]")
    seen = streamed_text(conn.events(tokens=4))
    assert conn.next_event().comment == "keepalive"  # the provider fell silent after 4
    stop(server, conn, seen_chars=10_000)
    saved = answer(server, conn)
    assert saved["content"].startswith(seen)
    assert len(saved["content"].split()) == 4


def test_stop_before_the_first_token_saves_an_empty_stopped_answer(server, upstream):
    prompt = marker()
    conn = open_stream(server.url, f"{prompt} [demo ttft=30]")
    upstream.record(prompt)
    summary = stop(server, conn, seen_chars=0)
    assert summary["status"] == "stopped"
    saved = answer(server, conn)
    assert (saved["content"], saved["status"], saved["reason"]) == ("", "stopped", "user_stop")


@pytest.mark.parametrize("close", ["close_fin", "close_rst"])
def test_closing_the_tab_saves_the_answer_as_client_disconnect(server, upstream, close):
    prompt = marker()
    conn = open_stream(server.url, f"{prompt} [demo tokens=300 gap=0.02]")
    seen = streamed_text(conn.events(tokens=5))
    getattr(conn, close)()
    upstream.ended(prompt)
    saved = ended_answer(server, conn)
    assert (saved["status"], saved["reason"]) == ("stopped", "client_disconnect")
    assert saved["content"].startswith(seen)


def test_a_stop_after_the_abort_is_still_the_users(server, upstream):
    # The page aborts its fetch and asks to stop at the same moment: the disconnect
    # usually wins the race, and the stop must still count with its seen_chars.
    prompt = marker()
    conn = open_stream(server.url, f"{prompt} [demo tokens=300 gap=0.02]")
    seen = streamed_text(conn.events(tokens=5))
    conn.close_rst()
    upstream.ended(prompt)
    # The disconnect has been recorded: this stop really comes after it.
    assert ended_answer(server, conn)["reason"] == "client_disconnect"
    summary = stop(server, conn, seen_chars=len(seen) - 1)
    assert (summary["status"], summary["reason"]) == ("stopped", "user_stop")
    saved = answer(server, conn)
    assert saved["content"] == seen[:-1]
    assert saved["reason"] == "user_stop"


def test_the_next_turn_sends_the_partial_answer_as_saved(server, upstream):
    first = marker()
    conn = open_stream(server.url, f"{first} [demo tokens=300 gap=0.02]")
    seen = streamed_text(conn.events(tokens=5))
    stop(server, conn, seen_chars=len(seen))
    conn.events()
    second = marker()
    follow = Connection(server.url)
    follow.post(
        "/api/chat",
        {
            "content": f"{second} [demo tokens=2 gap=0]",
            "conversation_id": conn.meta["conversation_id"],
        },
    )
    events = follow.events()
    meta = events[0].data
    assert meta["conversation_id"] == conn.meta["conversation_id"]
    assert events[-1].data["status"] == "complete"
    sent = upstream.ended(second)["messages"]
    assert [m["role"] for m in sent] == ["user", "assistant", "user"]
    assert sent[1]["content"] == seen
    assert sent[2]["content"] == f"{second} [demo tokens=2 gap=0]"
    assert len(conversation(server, meta["conversation_id"])["messages"]) == 4


def test_one_generation_at_a_time_per_conversation(server):
    conn = open_stream(server.url, f"{marker()} [demo tokens=300 gap=0.02]")
    conn.events(tokens=1)
    busy = requests.post(
        f"{server.url}/api/chat",
        json={"content": "again", "conversation_id": conn.meta["conversation_id"]},
        headers=AUTH,
        timeout=10,
    )
    assert busy.status_code == 409 and busy.json()["error"]["type"] == "conflict"
    stop(server, conn)
    conn.events()


def test_continue_after_stop_appends_to_the_same_answer(server, upstream):
    conn = open_stream(server.url, f"{marker()} [demo tokens=300 gap=0.02]")
    seen = streamed_text(conn.events(tokens=4))
    stop(server, conn, seen_chars=len(seen))
    conn.events()
    ids = conn.meta
    follow = Connection(server.url)
    follow.post(
        f"/api/conversations/{ids['conversation_id']}/messages/{ids['message_id']}/continue",
        {},
    )
    events = follow.events()
    assert events[0].data["message_id"] == ids["message_id"]
    more = streamed_text(events)
    assert events[-1].data["status"] == "complete"
    saved = answer(server, conn)
    assert saved["content"] == seen + more
    assert (saved["status"], saved["reason"]) == ("complete", None)
    assert saved["generation_id"] == events[0].data["generation_id"] != ids["generation_id"]
    # The fallback: the partial answer, then a user turn asking to go on.
    sent = upstream.streams()[-1]["messages"]
    assert [m["role"] for m in sent] == ["user", "assistant", "user"]
    assert sent[1]["content"] == seen
    assert "Continue" in sent[2]["content"]


def test_regenerate_replaces_the_answer_and_keeps_the_old_one(server):
    conn = open_stream(server.url, f"{marker()} [demo tokens=300 gap=0.02]")
    seen = streamed_text(conn.events(tokens=3))
    stop(server, conn, seen_chars=len(seen))
    conn.events()
    ids = conn.meta
    follow = Connection(server.url)
    url = f"/api/conversations/{ids['conversation_id']}/messages/{ids['message_id']}/regenerate"
    follow.post(url, {})
    events = follow.events()
    fresh = streamed_text(events)
    saved = answer(server, conn)
    assert saved["content"] == fresh and saved["status"] == "complete"
    assert [(v["content"], v["status"], v["reason"]) for v in saved["versions"]] == [
        (seen, "stopped", "user_stop")
    ]


def test_wrong_targets_get_clear_errors(server):
    conn = open_stream(server.url, f"{marker()} [demo tokens=2 gap=0]")
    conn.events()
    cid, mid = conn.meta["conversation_id"], conn.meta["message_id"]
    user_id = conversation(server, cid)["messages"][0]["id"]
    base = f"{server.url}/api/conversations"
    cases = [
        (f"{base}/{cid}/messages/{user_id}/regenerate", 422),
        (f"{base}/{cid}/messages/{mid}/continue", 422),  # complete: nothing to continue
        (f"{base}/{cid}/messages/msg_nope/regenerate", 404),
        (f"{base}/conv_nope/messages/{mid}/regenerate", 404),
    ]
    for url, status in cases:
        response = requests.post(url, json={}, headers=AUTH, timeout=10)
        assert response.status_code == status, (url, response.text)
        assert response.json()["error"]["message"]
    assert requests.get(f"{base}/conv_nope", headers=AUTH, timeout=10).status_code == 404
    assert requests.delete(f"{base}/conv_nope", headers=AUTH, timeout=10).status_code == 404
    bad_limit = requests.get(f"{base}?limit=0", headers=AUTH, timeout=10)
    assert bad_limit.status_code == 400
    bad_cursor = requests.get(f"{base}?before=%%%", headers=AUTH, timeout=10)
    assert bad_cursor.status_code == 400


def test_list_pages_newest_first_and_delete(server):
    ids = []
    for _ in range(3):
        conn = open_stream(server.url, f"{marker()} [demo tokens=1 gap=0]")
        conn.events()
        ids.append(conn.meta["conversation_id"])
    page = requests.get(f"{server.url}/api/conversations?limit=2", headers=AUTH, timeout=10).json()
    assert [c["id"] for c in page["conversations"]] == ids[::-1][:2]
    rest = requests.get(
        f"{server.url}/api/conversations",
        params={"limit": 1, "before": page["next"]},
        headers=AUTH,
        timeout=10,
    ).json()
    assert [c["id"] for c in rest["conversations"]] == [ids[0]]
    deleted = requests.delete(f"{server.url}/api/conversations/{ids[0]}", headers=AUTH, timeout=10)
    assert deleted.status_code == 204
    assert (
        requests.get(
            f"{server.url}/api/conversations/{ids[0]}", headers=AUTH, timeout=10
        ).status_code
        == 404
    )


def test_a_late_stop_of_a_continuation_keeps_the_earlier_text(server, upstream):
    conn = open_stream(server.url, f"{marker()} [demo tokens=300 gap=0.02]")
    first = streamed_text(conn.events(tokens=3))
    stop(server, conn, seen_chars=len(first))
    conn.events()
    ids = conn.meta
    prompt_count = len(upstream.streams())
    follow = Connection(server.url)
    follow.post(
        f"/api/conversations/{ids['conversation_id']}/messages/{ids['message_id']}/continue", {}
    )
    events = follow.events(tokens=4)
    more = streamed_text(events)
    follow.close_rst()  # the page aborts its fetch, then its stop arrives
    assert ended_answer(server, conn)["reason"] == "client_disconnect"
    assert len(upstream.streams()) == prompt_count + 1
    url = f"{server.url}/api/generations/{events[0].data['generation_id']}/stop"
    assert (
        requests.post(url, json={"seen_chars": 2}, headers=AUTH, timeout=10).json()["reason"]
        == "user_stop"
    )
    saved = answer(server, conn)
    assert saved["content"] == first + more[:2]
    assert (saved["status"], saved["reason"]) == ("stopped", "user_stop")

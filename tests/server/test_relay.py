"""The relay end to end: real gunicorn (gevent workers), real sockets, the demo provider.

Bounds are generous (a loaded CI machine must not flake); bench/ measures milliseconds.
"""

import math
import time
import uuid

import pytest
import requests
from conftest import Server
from wire import AUTH, Connection, connection_to, open_stream, pinned

SOON_S = 1.0  # "closed at once", generously


def marker() -> str:
    return uuid.uuid4().hex[:12]


def tokens_after(record: dict, moment: float) -> int:
    return sum(t > moment for t in record["token_times"])


def test_normal_end_streams_every_token_then_done(server, upstream):
    prompt = marker()
    conn = open_stream(server.url, f"{prompt} [demo tokens=8 gap=0.005]")
    assert conn.headers["content-type"].startswith("text/event-stream")
    assert conn.headers["cache-control"] == "no-cache"
    assert conn.headers["x-accel-buffering"] == "no"
    events = conn.events()
    tokens = [e for e in events if e.event == "token"]
    done = events[-1]
    assert done.event == "done"
    assert done.data["status"] == "complete" and done.data["reason"] is None
    assert done.data["generation_id"] == conn.meta["generation_id"]
    assert done.data["usage"]["completion_tokens"] == 8
    assert done.data["usage"]["estimated"] is False
    assert "receipt" not in done.data
    text = "".join(e.data["text"] for e in tokens)
    assert text.startswith("A stop button should stop the model") and len(text.split()) == 8
    # Each id is how many characters were sent once that event is (what a resume sends).
    assert [int(e.id) for e in tokens] == [
        len("".join(e.data["text"] for e in tokens[: i + 1])) for i in range(len(tokens))
    ]
    assert upstream.ended(prompt)["ended"] == "complete"


def test_meta_comes_first_with_an_unguessable_id(server):
    conn = open_stream(server.url, f"{marker()} [demo tokens=1]")
    generation_id = conn.meta["generation_id"]
    assert generation_id.startswith("gen_") and len(generation_id) >= 20
    assert conn.meta["conversation_id"].startswith("conv_")
    assert conn.meta["message_id"].startswith("msg_")
    assert len({generation_id, conn.meta["conversation_id"], conn.meta["message_id"]}) == 3
    conn.events()


@pytest.mark.parametrize("close", ["close_fin", "close_rst"])
def test_client_leaving_mid_stream_closes_the_provider(server, upstream, close):
    prompt = marker()
    conn = open_stream(server.url, f"{prompt} [demo tokens=200 gap=0.02]")
    assert len([e for e in conn.events(tokens=5) if e.event == "token"]) == 5
    closed_at = getattr(conn, close)()
    record = upstream.ended(prompt)
    assert record["ended"] == "client_closed"
    assert record["client_closed_at"] - closed_at < SOON_S
    assert tokens_after(record, closed_at) <= 1
    assert record["tokens_sent"] < 20


@pytest.mark.parametrize("close", ["close_fin", "close_rst"])
def test_client_leaving_while_the_provider_is_silent_for_30s(server, upstream, close):
    prompt = marker()
    conn = open_stream(server.url, f"{prompt} [demo tokens=50 gap=0.01 silence=3:30]")
    conn.events(tokens=3)
    time.sleep(0.3)  # well into the silence
    closed_at = getattr(conn, close)()
    record = upstream.ended(prompt)
    assert record["ended"] == "client_closed"
    assert record["client_closed_at"] - closed_at < SOON_S
    assert record["tokens_sent"] == 3


def test_client_leaving_before_the_provider_sent_headers(server, upstream):
    prompt = marker()
    conn = open_stream(server.url, f"{prompt} [demo headers_delay=30]")
    upstream.record(prompt)  # the provider has the request and is sitting on it
    closed_at = conn.close_fin()
    record = upstream.ended(prompt)
    assert record["client_closed_at"] - closed_at < SOON_S
    assert record["tokens_sent"] == 0


def test_user_stop_before_the_first_token(server, upstream):
    prompt = marker()
    conn = open_stream(server.url, f"{prompt} [demo ttft=30]")
    upstream.record(prompt)
    generation_id = conn.meta["generation_id"]
    stopped_at = time.monotonic()
    answer = requests.post(
        f"{server.url}/api/generations/{generation_id}/stop", headers=AUTH, timeout=10
    )
    assert answer.status_code == 200, answer.text
    assert answer.json()["status"] == "stopped" and answer.json()["reason"] == "user_stop"
    events = [e for e in conn.events() if e.comment is None]
    assert [e.event for e in events] == ["done"]
    done = events[0].data
    assert done["status"] == "stopped" and done["reason"] == "user_stop"
    # No usage from the provider: the prompt is estimated at 4 characters a token.
    sent = upstream.record(prompt)["messages"]
    prompt_tokens = math.ceil(sum(len(m["content"]) for m in sent) / 4)
    assert prompt_tokens > 0
    assert done["usage"] == {
        "prompt_tokens": prompt_tokens,
        "completion_tokens": 0,
        "total_tokens": prompt_tokens,
        "estimated": True,
    }
    assert done["receipt"]["signal"] == "user_stop"
    assert 0 <= done["receipt"]["stop_to_close_ms"] < SOON_S * 1000
    assert done["receipt"]["tokens_after_stop"] == 0
    record = upstream.ended(prompt)
    assert record["client_closed_at"] - stopped_at < SOON_S
    assert record["tokens_sent"] == 0


@pytest.mark.parametrize("worker", ["same", "other"])
def test_explicit_stop_on_either_worker(server, upstream, worker):
    streaming_pid, conn = pinned(server.url)
    same = connection_to(server.url, lambda pid: pid == streaming_pid)
    prompt = marker()
    conn.post("/api/chat", {"content": f"{prompt} [demo tokens=200 gap=0.02]"})
    generation_id = conn.events(tokens=3)[0].data["generation_id"]
    other = connection_to(server.url, lambda pid: pid != streaming_pid)
    asker = same if worker == "same" else other
    assert (asker.get_json("/api/debug/stats")["pid"] == streaming_pid) == (worker == "same")
    stopped_at = time.monotonic()
    asker.post(f"/api/generations/{generation_id}/stop", {"seen_chars": 12})
    assert asker.status == 200, asker.json()
    summary = asker.json()
    assert (summary["status"], summary["reason"]) == ("stopped", "user_stop")
    assert summary["receipt"]["stop_to_close_ms"] < SOON_S * 1000
    events = conn.events()
    assert events[-1].event == "done"
    assert events[-1].data["status"] == "stopped"
    assert events[-1].data["receipt"] == summary["receipt"]
    record = upstream.ended(prompt)
    assert record["client_closed_at"] - stopped_at < SOON_S
    assert tokens_after(record, stopped_at) <= 1
    # Idempotent: asking again, from either worker, reports the same outcome.
    for again in (same, other):
        again.post(f"/api/generations/{generation_id}/stop", {})
        assert again.status == 200 and again.json()["status"] == "stopped"


def test_stop_after_completion_reports_complete(server):
    streaming_pid, conn = pinned(server.url)
    conn.post("/api/chat", {"content": f"{marker()} [demo tokens=3 gap=0]"})
    events = conn.events()
    assert events[-1].data["status"] == "complete"
    stop_path = f"/api/generations/{events[0].data['generation_id']}/stop"
    other = connection_to(server.url, lambda pid: pid != streaming_pid)
    for asker in (conn, other):  # the worker that streamed it, and the other one
        asker.post(stop_path, {})
        assert asker.status == 200 and asker.json()["status"] == "complete"


def test_keep_alive_connection_serves_the_next_request(server, upstream):
    conn = Connection(server.url)
    for _ in range(3):
        conn.post("/api/chat", {"content": f"{marker()} [demo tokens=3 gap=0]"})
        assert conn.events()[-1].data["status"] == "complete"
    # The watcher of the earlier requests is gone; the new one notices a close.
    prompt = marker()
    conn.post("/api/chat", {"content": f"{prompt} [demo tokens=200 gap=0.02]"})
    conn.events(tokens=2)
    closed_at = conn.close_fin()
    assert upstream.ended(prompt)["client_closed_at"] - closed_at < SOON_S


def test_pipelined_bytes_do_not_hide_the_close(server, upstream):
    prompt = marker()
    conn = open_stream(server.url, f"{prompt} [demo tokens=200 gap=0.02]")
    conn.events(tokens=2)
    # The next request arrives while this one streams: readable, yet still open.
    conn.sock.sendall(b"GET /api/debug/stats HTTP/1.1\r\nHost: x\r\n\r\n")
    assert len([e for e in conn.events(tokens=5) if e.event == "token"]) == 5  # it streams on
    assert upstream.record(prompt)["ended"] == "streaming"
    closed_at = conn.close_fin()
    assert upstream.ended(prompt)["client_closed_at"] - closed_at < SOON_S


def test_heartbeats_while_the_provider_is_silent(server):
    conn = open_stream(server.url, f"{marker()} [demo tokens=4 gap=0 silence=2:1.5]")
    events = conn.events()
    kinds = [e.comment or e.event for e in events]
    first, last = kinds.index("token"), len(kinds) - 1 - kinds[::-1].index("token")
    assert kinds[first:last].count("keepalive") >= 3, kinds  # every 0.3 s of a 1.5 s silence
    assert kinds[-1] == "done" and events[-1].data["status"] == "complete"


def test_slow_reader_gets_coalesced_tokens(server):
    conn = open_stream(server.url, f"{marker()} [demo tokens=100 gap=0]")
    time.sleep(0.5)  # let every token queue up before reading any
    events = conn.events()
    tokens = [e for e in events if e.event == "token"]
    assert len("".join(e.data["text"] for e in tokens).split()) == 100
    assert len(tokens) < 100
    assert events[-1].data["usage"]["completion_tokens"] == 100


def test_the_worker_froze_the_loaded_app_out_of_the_collectors_way(server):
    """`post_worker_init` froze what the app's loading made: a full collection, which
    holds every stream, scans only what requests made."""
    stats = Connection(server.url).get_json("/api/debug/stats")
    assert stats["gc_frozen"] > 10_000


def test_the_worker_spawns_greenlets_without_their_spawning_tree(server):
    """The hooks turned off gevent's record of who spawned each greenlet, from where."""
    stats = Connection(server.url).get_json("/api/debug/stats")
    assert stats["greenlet_tree_tracked"] is False


def test_an_operator_can_keep_the_spawning_tree(upstream):
    """GEVENT_TRACK_GREENLET_TREE set by the operator wins over the hooks' default."""
    server = Server(upstream.url, GEVENT_TRACK_GREENLET_TREE="true")
    try:
        stats = Connection(server.url).get_json("/api/debug/stats")
    finally:
        server.close()
    assert stats["greenlet_tree_tracked"] is True

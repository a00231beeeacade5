"""Every way a provider fails ends in an `error` event, then `done`, with the text kept."""

import uuid

import pytest
from conftest import Server, free_port
from wire import open_stream


def finish(conn) -> tuple[list[str], dict, dict]:
    """The streamed text pieces, the error event's data and the done event's data."""
    events = [e for e in conn.events() if e.comment is None]
    assert [e.event for e in events[-2:]] == ["error", "done"], events
    texts = [e.data["text"] for e in events if e.event == "token"]
    return texts, events[-2].data["error"], events[-1].data


@pytest.mark.parametrize(
    ("status", "error_type"),
    [
        (401, "provider_auth"),
        (404, "provider_not_found"),
        (429, "provider_rate_limited"),
        (500, "provider_unavailable"),
        (503, "provider_unavailable"),
        (400, "provider_bad_request"),
    ],
)
def test_http_error_statuses(server, upstream, status, error_type):
    prompt = uuid.uuid4().hex
    conn = open_stream(server.url, f"{prompt} [demo status={status}]")
    texts, error, done = finish(conn)
    assert texts == []
    assert error["type"] == error_type
    assert f"HTTP {status}" in error["message"]
    assert f"demo model injected HTTP {status}" in error["message"]  # the provider's own words
    assert (done["status"], done["reason"]) == ("error", "upstream_error")
    assert upstream.ended(prompt)["ended"] == "error_status"


@pytest.mark.parametrize(
    ("fail", "error_type", "words"),
    [
        ("drop", "provider_disconnected", "dropped"),
        ("malformed", "provider_stream_error", "malformed"),
        ("error", "provider_stream_error", "overloaded"),
    ],
)
def test_failures_mid_stream_keep_the_partial_text(server, upstream, fail, error_type, words):
    prompt = uuid.uuid4().hex
    conn = open_stream(server.url, f"{prompt} [demo tokens=10 gap=0.005 fail={fail}:4]")
    texts, error, done = finish(conn)
    assert len("".join(texts).split()) == 4
    assert error["type"] == error_type
    assert words in error["message"]
    assert (done["status"], done["reason"]) == ("error", "upstream_error")
    assert done["usage"] == {
        "prompt_tokens": done["usage"]["prompt_tokens"],
        "completion_tokens": 4,
        "total_tokens": done["usage"]["prompt_tokens"] + 4,
        "estimated": True,
    }
    assert upstream.ended(prompt)["ended"] == f"injected_{fail}"


def test_refused_connection(upstream):
    server = Server(f"http://127.0.0.1:{free_port()}/v1")
    try:
        conn = open_stream(server.url, "hello")
        texts, error, done = finish(conn)
        assert texts == []
        assert error["type"] == "provider_unreachable"
        assert "127.0.0.1" in error["message"]
        assert (done["status"], done["reason"]) == ("error", "upstream_error")
    finally:
        server.close()


def test_idle_provider_times_out_and_its_connection_is_closed(upstream):
    server = Server(upstream.url, STOPWIRE_READ_TIMEOUT_S="0.5", STOPWIRE_HEARTBEAT_S="5")
    try:
        prompt = uuid.uuid4().hex
        conn = open_stream(server.url, f"{prompt} [demo tokens=10 gap=0 silence=2:30]")
        texts, error, done = finish(conn)
        assert len("".join(texts).split()) == 2
        assert error["type"] == "provider_timeout"
        assert (done["status"], done["reason"]) == ("error", "timeout")
        assert upstream.ended(prompt)["ended"] == "client_closed"
    finally:
        server.close()


def test_the_api_key_never_reaches_the_client_or_the_log(upstream):
    key = "sk-stopwire-test-" + uuid.uuid4().hex
    server = Server(upstream.url, STOPWIRE_API_KEY=key)
    try:
        conn = open_stream(server.url, "hello [demo status=401]")
        events = conn.events()
        assert all(key not in repr(e.data) for e in events)
        assert events[-1].data["status"] == "error"
    finally:
        server.close()
    assert key not in server.output()

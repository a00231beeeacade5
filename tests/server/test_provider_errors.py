"""Every way a provider fails ends in an `error` event, then `done`, with the text kept."""

import math
import uuid

import pytest
import requests
from conftest import Server, free_port
from wire import AUTH, open_stream


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
    content = f"{prompt} [demo tokens=10 gap=0.005 fail={fail}:4]"
    conn = open_stream(server.url, content)
    texts, error, done = finish(conn)
    assert len("".join(texts).split()) == 4
    assert error["type"] == error_type
    assert words in error["message"]
    assert (done["status"], done["reason"]) == ("error", "upstream_error")
    record = upstream.ended(prompt)
    assert record["ended"] == f"injected_{fail}"
    assert record["messages"] == [{"role": "user", "content": content}]
    # No usage came from the provider: estimated, the prompt at about 4 characters a token.
    prompt_tokens = math.ceil(len(content) / 4)
    assert done["usage"] == {
        "prompt_tokens": prompt_tokens,
        "completion_tokens": 4,
        "total_tokens": prompt_tokens + 4,
        "estimated": True,
    }


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


@pytest.mark.parametrize("shape", ["sk-stopwire-test-", "stopwire"])  # key-like or any shape
def test_the_api_key_echoed_by_the_provider_never_reaches_the_client_or_the_log(upstream, shape):
    key = shape + uuid.uuid4().hex
    server = Server(upstream.url, STOPWIRE_API_KEY=key)
    try:
        conn = open_stream(server.url, "hello [demo status=401]")
        texts, error, done = finish(conn)
        assert texts == []
        assert error["type"] == "provider_auth"
        # The provider quoted the key it was sent; the relay passed on its words without it.
        assert error["message"].endswith("incorrect API key provided: [redacted]")
        assert (done["status"], done["reason"]) == ("error", "upstream_error")
        assert key not in repr(error) + repr(done)

        body = {"model": "stopwire-demo", "messages": [{"role": "user", "content": "x"}]}
        for stream in (False, True):
            body["messages"][0]["content"] = f"{uuid.uuid4().hex} [demo status=401]"
            answer = requests.post(
                f"{server.url}/v1/chat/completions",
                json={**body, "stream": stream},
                headers=AUTH,
                timeout=10,
            )
            assert answer.status_code == 502  # our key is wrong, not the caller's
            assert "[redacted]" in answer.json()["error"]["message"]
            assert key not in answer.text
    finally:
        server.close()
    log = server.output()
    assert log.count("incorrect API key provided: [redacted]") == 3  # each failure was logged
    assert key not in log

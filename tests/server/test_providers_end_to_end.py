"""The Anthropic and Ollama protocols through the whole relay: recorded streams
replayed by a stand-in provider, requests checked as the provider received them."""

import uuid

import pytest
import requests
from conftest import Server
from replay import Replay, anthropic_stream, ollama_stream
from wire import AUTH, Connection, open_stream


@pytest.fixture(scope="module")
def replay():
    server = Replay()
    yield server
    server.close()


ANTHROPIC_KEY = "sk-ant-test-key-123456"


@pytest.fixture(scope="module")
def anthropic(replay):
    server = Server(
        f"{replay.url}/v1",
        STOPWIRE_PROVIDER="anthropic",
        STOPWIRE_API_KEY=ANTHROPIC_KEY,
        STOPWIRE_MODEL="claude-test",
    )
    yield server
    server.close()


def text_and_done(events) -> tuple[str, dict]:
    return "".join(e.data["text"] for e in events if e.event == "token"), events[-1].data


def test_anthropic_answer_with_its_usage(anthropic, replay):
    replay.queue("text/event-stream", anthropic_stream("Hello", " world"))
    conn = Connection(anthropic.url)
    conn.post(
        "/api/chat",
        {
            "messages": [
                {"role": "system", "content": "Be brief."},
                {"role": "user", "content": "Hi"},
            ]
        },
    )
    text, done = text_and_done(conn.events())
    assert text == "Hello world"
    assert done["status"] == "complete"
    assert done["usage"] == {
        "prompt_tokens": 11,
        "completion_tokens": 2,
        "total_tokens": 13,
        "estimated": False,
    }
    sent = replay.requests[-1]
    assert sent["path"] == "/v1/messages"
    assert sent["headers"]["x-api-key"] == ANTHROPIC_KEY
    assert sent["headers"]["anthropic-version"] == "2023-06-01"
    assert sent["body"]["system"] == "Be brief."
    assert sent["body"]["messages"] == [{"role": "user", "content": "Hi"}]
    assert sent["body"]["model"] == "claude-test" and sent["body"]["stream"] is True


def test_anthropic_quoting_the_key_back_never_shows_it(anthropic, replay):
    replay.queue_key_echo()
    conn = open_stream(anthropic.url, f"{uuid.uuid4().hex} hello")
    events = conn.events()
    assert [e.event for e in events[-2:]] == ["error", "done"]
    assert replay.requests[-1]["headers"]["x-api-key"] == ANTHROPIC_KEY
    error = events[-2].data["error"]
    assert error["type"] == "provider_auth"
    assert error["message"].endswith("invalid x-api-key: [redacted]")
    assert all(ANTHROPIC_KEY not in repr(e.data) for e in events)
    assert "invalid x-api-key: [redacted]" in anthropic.output()
    assert ANTHROPIC_KEY not in anthropic.output()


def test_anthropic_continue_uses_an_assistant_prefill(anthropic, replay):
    replay.queue("text/event-stream", anthropic_stream("The answer ", error="Overloaded"))
    conn = open_stream(anthropic.url, f"{uuid.uuid4().hex} question")
    text, done = text_and_done(conn.events())
    assert (text, done["status"]) == ("The answer ", "error")

    replay.queue("text/event-stream", anthropic_stream(" is 42."))
    ids = conn.meta
    follow = Connection(anthropic.url)
    follow.post(
        f"/api/conversations/{ids['conversation_id']}/messages/{ids['message_id']}/continue", {}
    )
    assert text_and_done(follow.events())[1]["status"] == "complete"
    sent = replay.requests[-1]["body"]["messages"]
    assert sent[-1] == {"role": "assistant", "content": "The answer"}  # no trailing space
    assert [m["role"] for m in sent] == ["user", "assistant"]
    saved = requests.get(
        f"{anthropic.url}/api/conversations/{ids['conversation_id']}", headers=AUTH, timeout=10
    ).json()["messages"][-1]
    assert (saved["content"], saved["status"]) == ("The answer is 42.", "complete")


def test_anthropic_options_through_the_openai_endpoint(anthropic, replay):
    replay.queue("text/event-stream", anthropic_stream("ok"))
    body = {
        "model": "claude-test",
        "messages": [{"role": "user", "content": "Hi"}],
        "max_tokens": 50,
        "stop": "END",
        "temperature": 0.3,
        "top_p": 0.8,
        "user": "u-42",
    }
    answer = requests.post(
        f"{anthropic.url}/v1/chat/completions", json=body, headers=AUTH, timeout=10
    )
    assert answer.status_code == 200, answer.text
    assert answer.json()["choices"][0]["message"]["content"] == "ok"
    sent = replay.requests[-1]["body"]
    assert sent == {
        "model": "claude-test",
        "messages": [{"role": "user", "content": "Hi"}],
        "stream": True,
        "max_tokens": 50,
        "stop_sequences": ["END"],
        "temperature": 0.3,
        "top_p": 0.8,
        "metadata": {"user_id": "u-42"},
    }
    replay.queue("text/event-stream", anthropic_stream("ok"))
    body = {"model": "claude-test", "messages": body["messages"], "max_completion_tokens": 7}
    answer = requests.post(
        f"{anthropic.url}/v1/chat/completions", json=body, headers=AUTH, timeout=10
    )
    assert answer.status_code == 200, answer.text
    assert replay.requests[-1]["body"]["max_tokens"] == 7
    refused = requests.post(
        f"{anthropic.url}/v1/chat/completions", json={**body, "seed": 1}, headers=AUTH, timeout=10
    )
    assert refused.status_code == 400 and refused.json()["error"]["param"] == "seed"


def test_ollama_native_answer_with_its_usage(replay):
    server = Server(replay.url, STOPWIRE_PROVIDER="ollama", STOPWIRE_MODEL="llama3.2")
    try:
        replay.queue("application/x-ndjson", ollama_stream("Hi", " there"))
        conn = open_stream(server.url, "Hello")
        text, done = text_and_done(conn.events())
        assert (text, done["status"]) == ("Hi there", "complete")
        assert done["usage"]["prompt_tokens"] == 7 and done["usage"]["completion_tokens"] == 2
        sent = replay.requests[-1]
        assert sent["path"] == "/api/chat"
        assert sent["body"] == {
            "model": "llama3.2",
            "messages": [{"role": "user", "content": "Hello"}],
            "stream": True,
        }

        replay.queue("application/x-ndjson", ollama_stream("ok"))
        body = {
            "model": "llama3.2",
            "messages": [{"role": "user", "content": "Hi"}],
            "temperature": 0.3,
            "top_p": 0.8,
            "seed": 7,
            "stop": ["END"],
            "max_tokens": 50,
            "user": "u-42",  # an end-user tag Ollama has no place for
        }
        answer = requests.post(
            f"{server.url}/v1/chat/completions", json=body, headers=AUTH, timeout=10
        )
        assert answer.status_code == 200, answer.text
        assert replay.requests[-1]["body"]["options"] == {
            "temperature": 0.3,
            "top_p": 0.8,
            "seed": 7,
            "stop": ["END"],
            "num_predict": 50,
        }
    finally:
        server.close()

"""Exact bytes of the OpenAI chunks and of our own SSE encoding, from relay events."""

import json

import pytest

from flask_stopwire.formats import openai as fmt
from flask_stopwire.formats import sse
from flask_stopwire.relay.generation import RelayEvent


def relay(*events):
    yield from events


def sample_events():
    return relay(
        RelayEvent("meta", {"generation_id": "gen_1"}, 0),
        RelayEvent("token", "Hi", 2),
        RelayEvent("keepalive", None, 2),
        RelayEvent("token", " there", 8),
        RelayEvent("error", {"type": "provider_timeout", "message": "slow"}, 8),
        RelayEvent("done", {"status": "error"}, 8),
    )


def test_our_sse_encoding_ids_events_by_the_characters_sent():
    assert b"".join(sse.encode(sample_events())) == (
        b'id: 0\nevent: meta\ndata: {"generation_id":"gen_1"}\n\n'
        b'id: 2\nevent: token\ndata: {"text":"Hi"}\n\n'
        b": keepalive\n\n"
        b'id: 8\nevent: token\ndata: {"text":" there"}\n\n'
        b'id: 8\nevent: error\ndata: {"error":{"type":"provider_timeout","message":"slow"}}\n\n'
        b'id: end\nevent: done\ndata: {"status":"error"}\n\n'
    )


def test_for_eventsource_a_retry_hint_and_named_heartbeats():
    body = b"".join(sse.encode(sample_events(), retry_ms=1500))
    assert body.startswith(b"retry: 1500\n\nid: 0\nevent: meta\n")
    assert b"id: 2\nevent: heartbeat\ndata: {}\n\n" in body
    assert b": keepalive" not in body


def test_encoding_closes_the_relay_when_closed_early():
    closed = []

    def events():
        try:
            yield RelayEvent("token", "a")
            yield RelayEvent("token", "b")
        finally:
            closed.append(True)

    body = sse.encode(events())
    next(body)
    body.close()
    assert closed == [True]


def chunks(body: bytes) -> list:
    return [
        line.removeprefix(b"data: ").decode()
        for line in body.split(b"\n\n")
        if line.startswith(b"data: ")
    ]


def test_openai_stream_of_a_complete_answer_with_usage():
    completion = fmt.Completion("gen_abc", "m")
    usage = {"prompt_tokens": 3, "completion_tokens": 2, "total_tokens": 5, "estimated": False}
    body = b"".join(
        fmt.encode(
            completion,
            [RelayEvent("token", "Hi")],
            relay(
                RelayEvent("keepalive"), RelayEvent("done", {"status": "complete", "usage": usage})
            ),
            include_usage=True,
        )
    )
    assert b"\n\n: keepalive\n\n" in body
    parts = chunks(body)
    assert parts[-1] == "[DONE]"
    first, token, final, usage_chunk = (json.loads(p) for p in parts[:-1])
    assert first["id"] == "chatcmpl-abc" and first["object"] == "chat.completion.chunk"
    assert first["choices"] == [
        {"index": 0, "delta": {"role": "assistant", "content": ""}, "finish_reason": None}
    ]
    assert token["choices"][0]["delta"] == {"content": "Hi"}
    assert final["choices"] == [{"index": 0, "delta": {}, "finish_reason": "stop"}]
    assert usage_chunk["choices"] == []
    assert usage_chunk["usage"] == {"prompt_tokens": 3, "completion_tokens": 2, "total_tokens": 5}


def test_openai_stream_of_a_failed_answer_ends_with_an_error_and_no_done():
    completion = fmt.Completion("gen_abc", "m")
    body = b"".join(
        fmt.encode(
            completion,
            [],
            relay(
                RelayEvent("error", {"type": "provider_disconnected", "message": "cut"}),
                RelayEvent("done", {"status": "error", "reason": "upstream_error"}),
            ),
            include_usage=True,
        )
    )
    parts = chunks(body)
    assert "[DONE]" not in parts
    assert json.loads(parts[-1]) == {
        "error": {
            "message": "cut",
            "type": "server_error",
            "param": None,
            "code": "provider_disconnected",
        }
    }


def test_openai_stream_of_an_interrupted_answer_says_so():
    completion = fmt.Completion("gen_abc", "m")
    done = {"status": "interrupted", "reason": "shutdown"}
    body = b"".join(fmt.encode(completion, [], relay(RelayEvent("done", done)), False))
    error = json.loads(chunks(body)[-1])["error"]
    assert error["code"] == "shutdown" and "shutting down" in error["message"]


def test_whole_completion_and_error_statuses():
    usage = {"prompt_tokens": 1, "completion_tokens": 2, "total_tokens": 3, "estimated": True}
    whole = fmt.Completion("gen_x", "m").whole("Hello", usage)
    assert whole["choices"][0]["message"] == {"role": "assistant", "content": "Hello"}
    assert whole["usage"] == {"prompt_tokens": 1, "completion_tokens": 2, "total_tokens": 3}
    assert fmt.relay_error_status({"type": "provider_rate_limited"}) == 429
    assert fmt.relay_error_status({"type": "provider_timeout"}) == 504
    assert fmt.relay_error_status({"type": "provider_unavailable"}) == 503
    assert fmt.relay_error_status({"type": "provider_auth"}) == 502


EVERY_CHARACTER = "".join(map(chr, [*range(0xD800), *range(0xE000, 0x110000)]))


@pytest.mark.parametrize(
    "text",
    [
        "Hello",
        "",
        'quote " and \\ back',
        "line\nbreak",
        "héllo ✓ 🙂",
        "lone \ud83d half",
        EVERY_CHARACTER,
    ],
)
def test_a_token_chunk_is_the_chunk_encoded_whole(text):
    """The per-token shortcut encodes exactly what encoding the whole chunk would."""
    completion = fmt.Completion("gen_abc", 'model "quoted" ✓')
    whole = f"data: {sse.compact_json(completion.chunk({'content': text}))}\n\n"
    assert completion.token(text) == whole.encode("utf-8", "replace")

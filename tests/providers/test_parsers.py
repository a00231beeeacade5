"""Provider request builders and stream parsers, fed recorded bodies however they are chunked."""

import json

import pytest

from flask_stopwire.providers import DEFAULT_MODELS, DEFAULT_URLS, make_provider
from flask_stopwire.providers.anthropic import AnthropicProvider
from flask_stopwire.providers.base import (
    Delta,
    Message,
    ProviderCall,
    ProviderDisconnected,
    ProviderError,
    ProviderHTTPError,
    ProviderStreamError,
    ProviderTimeout,
    ProviderUnreachable,
    Usage,
    json_object,
)
from flask_stopwire.providers.http import error_message, redact
from flask_stopwire.providers.ollama import OllamaProvider
from flask_stopwire.providers.openai import OpenAIProvider

MESSAGES = [
    Message("system", "Be brief."),
    Message("user", "Hi"),
    Message("assistant", "Hello!"),
    Message("system", "Answer in English."),
    Message("user", "Say hello"),
]

# --- recorded streams: (event bytes, the deltas that event alone produces) ------------------

_OPENAI_HEAD = (
    b'{"id":"chatcmpl-B9MBs8CjcvOU2jLn4n570S5qMJKcT","object":"chat.completion.chunk",'
    b'"created":1741569952,"model":"gpt-4o-mini-2024-07-18","service_tier":"default",'
    b'"system_fingerprint":"fp_06737a9306",'
)


def _openai_chunk(choices: bytes, usage: bytes = b"null") -> bytes:
    return b"data: " + _OPENAI_HEAD + b'"choices":' + choices + b',"usage":' + usage + b"}\n\n"


OPENAI_EVENTS = [
    (
        _openai_chunk(
            b'[{"index":0,"delta":{"role":"assistant","content":"","refusal":null},'
            b'"logprobs":null,"finish_reason":null}]'
        ),
        [],
    ),
    (
        _openai_chunk(
            b'[{"index":0,"delta":{"content":"Hello"},"logprobs":null,"finish_reason":null}]'
        ),
        [Delta(text="Hello")],
    ),
    (
        _openai_chunk(
            b'[{"index":0,"delta":{"content":" there"},"logprobs":null,"finish_reason":null}]'
        ),
        [Delta(text=" there")],
    ),
    (
        _openai_chunk(
            '[{"index":0,"delta":{"content":", café ☕"},"logprobs":null,'
            '"finish_reason":null}]'.encode()
        ),
        [Delta(text=", café ☕")],
    ),
    (
        _openai_chunk(b'[{"index":0,"delta":{},"logprobs":null,"finish_reason":"stop"}]'),
        [],
    ),
    (
        _openai_chunk(
            b"[]",
            b'{"prompt_tokens":19,"completion_tokens":10,"total_tokens":29,'
            b'"prompt_tokens_details":{"cached_tokens":0,"audio_tokens":0},'
            b'"completion_tokens_details":{"reasoning_tokens":0,"audio_tokens":0,'
            b'"accepted_prediction_tokens":0,"rejected_prediction_tokens":0}}',
        ),
        [Delta(usage=Usage(19, 10))],
    ),
    (b"data: [DONE]\n\n", [Delta(finished=True)]),
]
OPENAI_FINISH_REASON_EVENT = 4

ANTHROPIC_EVENTS = [
    (
        b"event: message_start\n"
        b'data: {"type":"message_start","message":{"id":"msg_01XFDUDYJgAACzvnptvVoYEL",'
        b'"type":"message","role":"assistant","content":[],"model":"claude-sonnet-4-5-20250929",'
        b'"stop_reason":null,"stop_sequence":null,"usage":{"input_tokens":25,'
        b'"cache_creation_input_tokens":0,"cache_read_input_tokens":0,"output_tokens":1}}}\n\n',
        [],
    ),
    (
        b"event: content_block_start\n"
        b'data: {"type":"content_block_start","index":0,'
        b'"content_block":{"type":"text","text":""}}\n\n',
        [],
    ),
    (b'event: ping\ndata: {"type": "ping"}\n\n', []),
    (
        b"event: content_block_delta\n"
        b'data: {"type":"content_block_delta","index":0,'
        b'"delta":{"type":"text_delta","text":"Hello"}}\n\n',
        [Delta(text="Hello")],
    ),
    (
        "event: content_block_delta\n"
        'data: {"type":"content_block_delta","index":0,'
        '"delta":{"type":"text_delta","text":"! Grüße 👋"}}\n\n'.encode(),
        [Delta(text="! Grüße 👋")],
    ),
    (b'event: content_block_stop\ndata: {"type":"content_block_stop","index":0}\n\n', []),
    (
        b"event: message_delta\n"
        b'data: {"type":"message_delta","delta":{"stop_reason":"end_turn",'
        b'"stop_sequence":null},"usage":{"output_tokens":15}}\n\n',
        [Delta(usage=Usage(25, 15))],
    ),
    (b'event: message_stop\ndata: {"type":"message_stop"}\n\n', [Delta(finished=True)]),
]

_OLLAMA_AT = b'{"model":"llama3.2","created_at":"2025-01-10T12:00:00.%03dZ",'
OLLAMA_EVENTS = [
    (
        _OLLAMA_AT % 101 + b'"message":{"role":"assistant","content":"Hello"},"done":false}\n',
        [Delta(text="Hello")],
    ),
    (
        _OLLAMA_AT % 148 + b'"message":{"role":"assistant","content":" there"},"done":false}\n',
        [Delta(text=" there")],
    ),
    (
        _OLLAMA_AT % 193
        + '"message":{"role":"assistant","content":", naïve ✓"},"done":false}\n'.encode(),
        [Delta(text=", naïve ✓")],
    ),
    (
        _OLLAMA_AT
        % 240
        + b'"message":{"role":"assistant","content":""},"done_reason":"stop","done":true,'
        b'"total_duration":4883583458,"load_duration":1334875,"prompt_eval_count":26,'
        b'"prompt_eval_duration":342546000,"eval_count":282,"eval_duration":4535599000}\n',
        [Delta(usage=Usage(26, 282)), Delta(finished=True)],
    ),
]


def _stream(events: list[tuple[bytes, list[Delta]]]) -> bytes:
    return b"".join(event for event, _ in events)


def _deltas(events: list[tuple[bytes, list[Delta]]]) -> list[Delta]:
    return [delta for _, deltas in events for delta in deltas]


OPENAI_STREAM = _stream(OPENAI_EVENTS)
ANTHROPIC_STREAM = _stream(ANTHROPIC_EVENTS)
OLLAMA_STREAM = _stream(OLLAMA_EVENTS)

OPENAI_DELTAS = [
    Delta(text="Hello"),
    Delta(text=" there"),
    Delta(text=", café ☕"),
    Delta(usage=Usage(19, 10)),
    Delta(finished=True),
]
ANTHROPIC_DELTAS = [
    Delta(text="Hello"),
    Delta(text="! Grüße 👋"),
    Delta(usage=Usage(25, 15)),
    Delta(finished=True),
]
OLLAMA_DELTAS = [
    Delta(text="Hello"),
    Delta(text=" there"),
    Delta(text=", naïve ✓"),
    Delta(usage=Usage(26, 282)),
    Delta(finished=True),
]


def openai() -> OpenAIProvider:
    return OpenAIProvider("https://api.openai.com/v1", "sk-test", "gpt-4o-mini")


def anthropic() -> AnthropicProvider:
    return AnthropicProvider("https://api.anthropic.com/v1", "sk-ant-test", "claude-sonnet-4-5")


def ollama() -> OllamaProvider:
    return OllamaProvider("http://127.0.0.1:11434", "", "llama3.2")


PARSERS = [
    pytest.param(openai, OPENAI_STREAM, OPENAI_DELTAS, id="openai"),
    pytest.param(anthropic, ANTHROPIC_STREAM, ANTHROPIC_DELTAS, id="anthropic"),
    pytest.param(ollama, OLLAMA_STREAM, OLLAMA_DELTAS, id="ollama"),
]
SSE_PARSERS = PARSERS[:2]


def parse(provider, *chunks: bytes) -> list[Delta]:
    return list(provider.parse(iter(chunks)))


def parse_until_error(provider, *chunks: bytes) -> tuple[list[Delta], ProviderError]:
    """The deltas yielded before the parser raised, and what it raised."""
    seen: list[Delta] = []
    with pytest.raises(ProviderError) as info:
        seen.extend(provider.parse(iter(chunks)))
    return seen, info.value


# --- the recorded tables agree with the hand-written expectations ---------------------------


@pytest.mark.parametrize(
    ("events", "expected"),
    [
        (OPENAI_EVENTS, OPENAI_DELTAS),
        (ANTHROPIC_EVENTS, ANTHROPIC_DELTAS),
        (OLLAMA_EVENTS, OLLAMA_DELTAS),
    ],
)
def test_recorded_tables_add_up(events, expected):
    assert _deltas(events) == expected


# --- whole streams, however they are chunked ------------------------------------------------


@pytest.mark.parametrize(("make", "stream", "expected"), PARSERS)
def test_whole_stream_in_one_chunk(make, stream, expected):
    assert parse(make(), stream) == expected


@pytest.mark.parametrize(("make", "stream", "expected"), PARSERS)
def test_stream_split_at_every_byte_boundary(make, stream, expected):
    for cut in range(len(stream) + 1):
        got = parse(make(), stream[:cut], stream[cut:])
        assert got == expected, f"split at byte {cut}: {stream[cut - 10 : cut + 10]!r}"


@pytest.mark.parametrize(("make", "stream", "expected"), PARSERS)
def test_stream_fed_byte_by_byte(make, stream, expected):
    assert parse(make(), *(stream[i : i + 1] for i in range(len(stream)))) == expected


@pytest.mark.parametrize(("make", "stream", "expected"), PARSERS)
def test_parser_reads_nothing_after_the_end_of_the_answer(make, stream, expected):
    def body():
        yield stream
        raise AssertionError("the parser asked for a chunk after the answer ended")

    assert list(make().parse(body())) == expected


@pytest.mark.parametrize(("make", "stream", "expected"), PARSERS)
def test_transport_errors_pass_through(make, stream, expected):
    def body():
        yield stream[: len(stream) // 2]
        raise ProviderDisconnected("provider connection dropped mid-stream")

    with pytest.raises(ProviderDisconnected, match="dropped mid-stream"):
        list(make().parse(body()))


@pytest.mark.parametrize(("make", "stream", "expected"), SSE_PARSERS)
def test_sse_crlf_line_endings(make, stream, expected):
    crlf = stream.replace(b"\n", b"\r\n")
    assert parse(make(), crlf) == expected
    for cut in range(len(crlf) + 1):
        assert parse(make(), crlf[:cut], crlf[cut:]) == expected, f"split at byte {cut}"


@pytest.mark.parametrize(("make", "stream", "expected"), SSE_PARSERS)
def test_sse_bare_cr_line_endings(make, stream, expected):
    assert parse(make(), stream.replace(b"\n", b"\r")) == expected


@pytest.mark.parametrize(("make", "stream", "expected"), SSE_PARSERS)
def test_sse_comments_are_ignored(make, stream, expected):
    commented = b": keepalive\n\n" + stream.replace(
        b"\n\n", b"\n\n: keepalive\n\n: OPENROUTER PROCESSING\n\n"
    )
    assert parse(make(), commented) == expected
    assert parse(make(), *(commented[i : i + 1] for i in range(len(commented)))) == expected


def test_ollama_crlf_and_blank_lines():
    stream = OLLAMA_STREAM.replace(b"\n", b"\r\n\n")
    assert parse(ollama(), stream) == OLLAMA_DELTAS


# --- a stream cut short ---------------------------------------------------------------------


def _truncation_cases(events, end_marker_from_finish_reason: int | None = None):
    """(prefix length, expected deltas) for every prefix that stops before the final event ends.

    Only complete events count; an event cut off mid-way is dropped, as the SSE spec says.
    """
    offsets, total = [], 0
    for event, _ in events:
        total += len(event)
        offsets.append(total)
    for cut in range(offsets[-1]):
        complete = [deltas for end, (_, deltas) in zip(offsets, events, strict=True) if end <= cut]
        expected = [delta for deltas in complete for delta in deltas]
        if end_marker_from_finish_reason is not None and len(complete) > (
            end_marker_from_finish_reason
        ):
            expected.append(Delta(finished=True))
        yield cut, expected


def test_openai_truncated_anywhere_yields_complete_events_only():
    """Before [DONE] there is no end, unless a finish_reason was seen: then it ends anyway."""
    stream = OPENAI_STREAM
    for cut, expected in _truncation_cases(OPENAI_EVENTS, OPENAI_FINISH_REASON_EVENT):
        assert parse(openai(), stream[:cut]) == expected, f"cut at byte {cut}"


def test_openai_without_finish_reason_or_done_has_no_end():
    stream = _stream(OPENAI_EVENTS[:3])
    assert parse(openai(), stream) == [Delta(text="Hello"), Delta(text=" there")]


def test_openai_finish_reason_without_done_ends_the_answer():
    stream = _stream(OPENAI_EVENTS[:6])
    assert parse(openai(), stream) == OPENAI_DELTAS


@pytest.mark.parametrize(
    ("events", "make"),
    [(ANTHROPIC_EVENTS, anthropic), (OLLAMA_EVENTS, ollama)],
    ids=["anthropic", "ollama"],
)
def test_truncated_anywhere_yields_complete_events_and_no_end(events, make):
    stream = _stream(events)
    for cut, expected in _truncation_cases(events):
        got = parse(make(), stream[:cut])
        assert got == expected, f"cut at byte {cut}"
        assert Delta(finished=True) not in got


# --- SSE framing details --------------------------------------------------------------------


def test_openai_multi_line_data_is_joined_with_newline():
    event = (
        b'data: {"id":"chatcmpl-1","object":"chat.completion.chunk",\n'
        b'data: "choices":[{"index":0,"delta":{"content":"Hi"},"finish_reason":null}]}\n\n'
    )
    assert parse(openai(), event, b"data: [DONE]\n\n") == [
        Delta(text="Hi"),
        Delta(finished=True),
    ]


def test_anthropic_multi_line_data_is_joined_with_newline():
    event = (
        b"event: content_block_delta\n"
        b'data: {"type":"content_block_delta","index":0,\n'
        b'data: "delta":{"type":"text_delta","text":"Hi"}}\n\n'
    )
    stop = b'event: message_stop\ndata: {"type":"message_stop"}\n\n'
    assert parse(anthropic(), event, stop) == [Delta(text="Hi"), Delta(finished=True)]


def test_openai_data_without_space_after_colon():
    stream = b'data:{"choices":[{"index":0,"delta":{"content":"Hi"}}]}\n\ndata:[DONE]\n\n'
    assert parse(openai(), stream) == [Delta(text="Hi"), Delta(finished=True)]


def test_openai_done_with_surrounding_whitespace():
    assert parse(openai(), b"data:  [DONE] \n\n") == [Delta(finished=True)]


def test_openai_ignores_event_and_id_fields():
    stream = (
        b'id: 1\nevent: chunk\ndata: {"choices":[{"index":0,"delta":{"content":"Hi"}}]}\n\n'
        b"retry: 1000\n\n"
        b"data: [DONE]\n\n"
    )
    assert parse(openai(), stream) == [Delta(text="Hi"), Delta(finished=True)]


def test_openai_joins_text_of_several_choices():
    stream = (
        b'data: {"choices":[{"index":0,"delta":{"content":"a"}},'
        b'{"index":1,"delta":{"content":"b"}}]}\n\n'
    )
    assert parse(openai(), stream) == [Delta(text="ab")]


def test_openai_usage_on_a_text_chunk_is_kept_in_one_delta():
    stream = (
        b'data: {"choices":[{"index":0,"delta":{"content":"Hi"},"finish_reason":"stop"}],'
        b'"usage":{"prompt_tokens":3,"completion_tokens":1,"total_tokens":4}}\n\n'
    )
    assert parse(openai(), stream) == [
        Delta(text="Hi", usage=Usage(3, 1)),
        Delta(finished=True),
    ]


def test_anthropic_event_name_is_used_when_data_has_no_type():
    stream = b"event: message_stop\ndata: {}\n\n"
    assert parse(anthropic(), stream) == [Delta(finished=True)]


def test_anthropic_non_text_deltas_carry_no_text():
    stream = (
        b"event: content_block_delta\n"
        b'data: {"type":"content_block_delta","index":0,'
        b'"delta":{"type":"thinking_delta","thinking":"Let me think"}}\n\n'
        b"event: content_block_delta\n"
        b'data: {"type":"content_block_delta","index":0,'
        b'"delta":{"type":"signature_delta","signature":"EqQBCgIYAhIM"}}\n\n'
        b"event: content_block_delta\n"
        b'data: {"type":"content_block_delta","index":1,'
        b'"delta":{"type":"input_json_delta","partial_json":"{\\"city\\": "}}\n\n'
        b'event: message_stop\ndata: {"type":"message_stop"}\n\n'
    )
    assert parse(anthropic(), stream) == [Delta(finished=True)]


def test_anthropic_usage_without_message_start_counts_zero_prompt_tokens():
    stream = b'event: message_delta\ndata: {"type":"message_delta","usage":{"output_tokens":4}}\n\n'
    assert parse(anthropic(), stream) == [Delta(usage=Usage(0, 4))]


# --- errors inside the stream ---------------------------------------------------------------


def test_openai_error_chunk():
    error = (
        b'data: {"error":{"message":"The server had an error while processing your request. '
        b'Sorry about that!","type":"server_error","param":null,"code":null}}\n\n'
    )
    seen, exc = parse_until_error(openai(), _stream(OPENAI_EVENTS[:2]), error)
    assert seen == [Delta(text="Hello")]
    assert isinstance(exc, ProviderStreamError)
    assert exc.type == "provider_stream_error"
    assert str(exc) == ("The server had an error while processing your request. Sorry about that!")


def test_openai_error_chunk_without_message():
    seen, exc = parse_until_error(openai(), b'data: {"error":{"code":"boom"}}\n\n')
    assert seen == []
    assert isinstance(exc, ProviderStreamError)
    assert str(exc) == "{'code': 'boom'}"


def test_openai_error_as_a_string():
    _, exc = parse_until_error(openai(), b'data: {"error":"upstream timed out"}\n\n')
    assert isinstance(exc, ProviderStreamError)
    assert str(exc) == "upstream timed out"


def test_anthropic_error_event():
    error = (
        b"event: error\n"
        b'data: {"type":"error","error":{"type":"overloaded_error","message":"Overloaded"}}\n\n'
    )
    seen, exc = parse_until_error(anthropic(), _stream(ANTHROPIC_EVENTS[:4]), error)
    assert seen == [Delta(text="Hello")]
    assert isinstance(exc, ProviderStreamError)
    assert exc.type == "provider_stream_error"
    assert str(exc) == "Overloaded"


def test_anthropic_error_event_split_at_every_byte_boundary():
    stream = _stream(ANTHROPIC_EVENTS[:4]) + (
        b"event: error\n"
        b'data: {"type":"error","error":{"type":"overloaded_error","message":"Overloaded"}}\n\n'
    )
    for cut in range(len(stream) + 1):
        seen, exc = parse_until_error(anthropic(), stream[:cut], stream[cut:])
        assert (seen, type(exc), str(exc)) == (
            [Delta(text="Hello")],
            ProviderStreamError,
            "Overloaded",
        ), f"split at byte {cut}"


def test_ollama_error_line():
    error = b'{"error":"an error was encountered while running the model: unexpected EOF"}\n'
    seen, exc = parse_until_error(ollama(), _stream(OLLAMA_EVENTS[:2]), error)
    assert seen == [Delta(text="Hello"), Delta(text=" there")]
    assert isinstance(exc, ProviderStreamError)
    assert str(exc) == "an error was encountered while running the model: unexpected EOF"


def test_openai_malformed_json():
    # What the demo's `fail=malformed` sends.
    seen, exc = parse_until_error(
        openai(), _stream(OPENAI_EVENTS[:2]), b'data: {"choices": [{"delta": \n\n'
    )
    assert seen == [Delta(text="Hello")]
    assert isinstance(exc, ProviderStreamError)
    assert str(exc) == 'malformed stream line: \'{"choices": [{"delta": \''


@pytest.mark.parametrize("data", [b"[1, 2]", b'"text"', b"null", b"42"])
def test_openai_json_that_is_not_an_object(data):
    _, exc = parse_until_error(openai(), b"data: " + data + b"\n\n")
    assert isinstance(exc, ProviderStreamError)
    assert str(exc) == f"malformed stream line: {data.decode()!r}"


@pytest.mark.parametrize(
    "line",
    [
        '{"a": 1}',
        ' {"a": 1} ',  # whitespace around it
        '{"a": 1}\n',
        '{"a": "\\ud83d", "b": NaN}',  # a lone surrogate, a NaN: json.loads takes both
        '{"a": 1, "a": 2}',
        '{"a": 1}{"b": 2}',  # extra data
        '{"a": 1} x',
        '{"a": ',
        '{"a": 1',
        "{}",
        "{",
        "[1]",
        b'{"a": "\xc3\xa9"}',  # bytes, as a line-based provider may pass
        # What orjson refuses and json.loads takes: the fallback reads them.
        '{"a": "\\ud83d"}',  # a lone surrogate alone
        '{"a": 1e400}',  # past a double's range: inf
        '{"a": "\\u00e9"}'.encode("utf-16"),  # UTF-16 bytes, with their BOM
        b'{"a": "\xff"}',  # invalid UTF-8: json.loads refuses it too
        '{"a": 12345678901234567890}',  # past 63 bits, within 64
    ],
)
def test_json_object_reads_what_json_loads_reads(line):
    try:
        expected = json.loads(line)
    except ValueError:
        expected = None
    if isinstance(expected, dict):
        assert json_object(line) == expected
    else:
        with pytest.raises(ProviderStreamError, match="malformed stream line"):
            json_object(line)


def test_json_object_reads_an_integer_past_64_bits_as_a_float():
    """orjson's one difference from json.loads, documented in `json_object`."""
    assert json_object('{"a": 123456789012345678901234567890}') == {"a": 1.2345678901234568e29}


def test_an_absurdly_nested_line_is_malformed_not_an_internal_error():
    with pytest.raises(ProviderStreamError, match="malformed stream line"):
        json_object('{"a": ' * 100_000 + "1" + "}" * 100_000)


@pytest.mark.parametrize(
    "chunk",
    [
        b'{"choices":[{"index":0,"delta":"oops"}]}',
        b'{"choices":"none"}',
        b'{"choices":[],"usage":{"prompt_tokens":"many","completion_tokens":1}}',
        b'{"choices":[],"usage":{"prompt_tokens":1}}',
    ],
)
def test_openai_unexpected_chunk_shape(chunk):
    _, exc = parse_until_error(openai(), b"data: " + chunk + b"\n\n")
    assert isinstance(exc, ProviderStreamError)
    assert str(exc) == f"unexpected chunk shape: {json.loads(chunk)}"


def test_anthropic_malformed_json():
    bad = b'event: content_block_delta\ndata: {"type":"content_block_delta","delta":{"te\n\n'
    seen, exc = parse_until_error(anthropic(), _stream(ANTHROPIC_EVENTS[:4]), bad)
    assert seen == [Delta(text="Hello")]
    assert isinstance(exc, ProviderStreamError)
    assert str(exc) == 'malformed stream line: \'{"type":"content_block_delta","delta":{"te\''


def test_anthropic_json_that_is_not_an_object():
    _, exc = parse_until_error(anthropic(), b"event: ping\ndata: []\n\n")
    assert isinstance(exc, ProviderStreamError)
    assert str(exc) == "malformed stream line: '[]'"


def test_anthropic_unexpected_usage_shape():
    bad = b'event: message_delta\ndata: {"type":"message_delta","usage":{"output_tokens":"x"}}\n\n'
    _, exc = parse_until_error(anthropic(), bad)
    assert isinstance(exc, ProviderStreamError)
    assert str(exc) == "unexpected usage shape: {'output_tokens': 'x'}"


def test_ollama_malformed_line():
    bad = b'{"model":"llama3.2","message":{"role":"assist\n'
    seen, exc = parse_until_error(ollama(), _stream(OLLAMA_EVENTS[:1]), bad)
    assert seen == [Delta(text="Hello")]
    assert isinstance(exc, ProviderStreamError)
    assert str(exc) == 'malformed stream line: b\'{"model":"llama3.2","message":{"role":"assist\''


def test_ollama_json_that_is_not_an_object():
    _, exc = parse_until_error(ollama(), b'["done"]\n')
    assert isinstance(exc, ProviderStreamError)
    assert str(exc) == "malformed stream line: b'[\"done\"]'"


def test_ollama_unexpected_token_counts():
    bad = b'{"message":{"content":""},"done":true,"prompt_eval_count":"lots","eval_count":1}\n'
    _, exc = parse_until_error(ollama(), bad)
    assert isinstance(exc, ProviderStreamError)
    assert str(exc) == "unexpected token counts in the final line"


def test_ollama_done_line_without_counts_reports_zero():
    line = b'{"message":{"role":"assistant","content":"Hi"},"done":true}\n'
    assert parse(ollama(), line) == [
        Delta(text="Hi"),
        Delta(usage=Usage(0, 0)),
        Delta(finished=True),
    ]


# --- build_call -----------------------------------------------------------------------------

_CHAT = [{"role": m.role, "content": m.content} for m in MESSAGES]


def test_openai_build_call_with_key():
    call = OpenAIProvider("https://api.openai.com/v1/", "sk-live", "gpt-4o-mini").build_call(
        MESSAGES
    )
    assert call == ProviderCall(
        url="https://api.openai.com/v1/chat/completions",
        json={
            "model": "gpt-4o-mini",
            "messages": _CHAT,
            "stream": True,
            "stream_options": {"include_usage": True},
        },
        headers={"Accept": "text/event-stream", "Authorization": "Bearer sk-live"},
    )


def test_openai_build_call_without_key_sends_no_authorization():
    call = OpenAIProvider("http://127.0.0.1:8400/v1", "", "stopwire-demo").build_call(MESSAGES)
    assert call.url == "http://127.0.0.1:8400/v1/chat/completions"
    assert call.headers == {"Accept": "text/event-stream"}
    assert call.json["model"] == "stopwire-demo"


def test_anthropic_build_call_moves_system_turns_to_top_level():
    call = AnthropicProvider(
        "https://api.anthropic.com/v1/", "sk-ant-live", "claude-sonnet-4-5"
    ).build_call(MESSAGES)
    assert call == ProviderCall(
        url="https://api.anthropic.com/v1/messages",
        json={
            "model": "claude-sonnet-4-5",
            "max_tokens": 4096,
            "stream": True,
            "messages": [
                {"role": "user", "content": "Hi"},
                {"role": "assistant", "content": "Hello!"},
                {"role": "user", "content": "Say hello"},
            ],
            "system": "Be brief.\n\nAnswer in English.",
        },
        headers={
            "anthropic-version": "2023-06-01",
            "Accept": "text/event-stream",
            "x-api-key": "sk-ant-live",
        },
    )


def test_anthropic_build_call_without_system_or_key():
    call = AnthropicProvider("https://api.anthropic.com/v1", "", "claude").build_call(
        [Message("user", "Hi")]
    )
    assert call.json == {
        "model": "claude",
        "max_tokens": 4096,
        "stream": True,
        "messages": [{"role": "user", "content": "Hi"}],
    }
    assert call.headers == {"anthropic-version": "2023-06-01", "Accept": "text/event-stream"}


def test_ollama_build_call_without_key():
    call = OllamaProvider("http://127.0.0.1:11434/", "", "llama3.2").build_call(MESSAGES)
    assert call == ProviderCall(
        url="http://127.0.0.1:11434/api/chat",
        json={"model": "llama3.2", "messages": _CHAT, "stream": True},
        headers={},
    )


def test_ollama_build_call_with_key_for_a_proxy():
    call = OllamaProvider("https://ollama.example", "proxy-token", "llama3.2").build_call(MESSAGES)
    assert call.url == "https://ollama.example/api/chat"
    assert call.headers == {"Authorization": "Bearer proxy-token"}


# --- registry -------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("name", "cls", "url", "model"),
    [
        ("openai", OpenAIProvider, "https://api.openai.com/v1", "gpt-4o-mini"),
        ("anthropic", AnthropicProvider, "https://api.anthropic.com/v1", "claude-sonnet-4-5"),
        ("ollama", OllamaProvider, "http://127.0.0.1:11434", "llama3.2"),
        ("demo", OpenAIProvider, "", "stopwire-demo"),
    ],
)
def test_make_provider_defaults(name, cls, url, model):
    provider = make_provider(name, "", "", "")
    assert type(provider) is cls
    assert (provider.url, provider.api_key, provider.model) == (url, "", model)
    assert DEFAULT_URLS.get(name, "") == url
    assert DEFAULT_MODELS[name] == model


def test_make_provider_settings_override_defaults():
    provider = make_provider("demo", "http://127.0.0.1:8400/v1/", "sk-x", "other")
    assert type(provider) is OpenAIProvider
    assert (provider.url, provider.api_key, provider.model) == (
        "http://127.0.0.1:8400/v1",
        "sk-x",
        "other",
    )


def test_make_provider_unknown_name():
    with pytest.raises(ValueError) as info:
        make_provider("gemini", "", "", "")
    assert str(info.value) == (
        "unknown provider 'gemini'; choose one of anthropic, demo, ollama, openai"
    )


# --- errors ---------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("status", "kind"),
    [
        (400, "provider_bad_request"),
        (401, "provider_auth"),
        (403, "provider_auth"),
        (404, "provider_not_found"),
        (408, "provider_bad_request"),
        (422, "provider_bad_request"),
        (429, "provider_rate_limited"),
        (500, "provider_unavailable"),
        (502, "provider_unavailable"),
        (503, "provider_unavailable"),
        (529, "provider_unavailable"),
    ],
)
def test_http_error_type_by_status(status, kind):
    exc = ProviderHTTPError(status, "details")
    assert exc.type == kind
    assert exc.status == status
    assert str(exc) == f"provider returned HTTP {status}: details"


@pytest.mark.parametrize(
    ("cls", "kind"),
    [
        (ProviderError, "provider_error"),
        (ProviderUnreachable, "provider_unreachable"),
        (ProviderTimeout, "provider_timeout"),
        (ProviderStreamError, "provider_stream_error"),
        (ProviderDisconnected, "provider_disconnected"),
    ],
)
def test_error_types(cls, kind):
    assert cls("x").type == kind
    assert issubclass(cls, ProviderError)


def test_error_message_from_openai_body_redacts_the_key():
    body = (
        b'{\n  "error": {\n    "message": "Incorrect API key provided: sk-proj-abc*********'
        b"**************************************wxyz. You can find your API key at "
        b'https://platform.openai.com/account/api-keys.",\n    "type": "invalid_request_error",'
        b'\n    "param": null,\n    "code": "invalid_api_key"\n  }\n}\n'
    )
    assert error_message(body) == (
        "Incorrect API key provided: [redacted] You can find your API key at "
        "https://platform.openai.com/account/api-keys."
    )


def test_error_message_from_anthropic_body():
    body = (
        b'{"type":"error","error":{"type":"authentication_error","message":"invalid x-api-key"},'
        b'"request_id":"req_011CSHoEeqs5C35K2UUqR7Fy"}'
    )
    assert error_message(body) == "invalid x-api-key"


def test_error_message_with_a_string_error():
    assert error_message(b'{"error":"model \\"llama9\\" not found, try pulling it first"}') == (
        'model "llama9" not found, try pulling it first'
    )


def test_error_message_error_object_without_message():
    assert error_message(b'{"error":{"code":"quota"}}') == "{'code': 'quota'}"


def test_error_message_json_without_error_key_is_kept_whole():
    assert error_message(b'{"detail":"Not Found"}') == '{"detail":"Not Found"}'


def test_error_message_non_json_body():
    assert error_message(b"<html><body>502 Bad Gateway</body></html>\r\n") == (
        "<html><body>502 Bad Gateway</body></html>"
    )


def test_error_message_undecodable_bytes_are_replaced():
    assert error_message(b"bad \xff byte") == "bad \ufffd byte"


@pytest.mark.parametrize("body", [b"", b"  \n ", b'{"error":""}'])
def test_error_message_empty(body):
    assert error_message(body) == "no details given"


def test_error_message_truncated_to_500_chars():
    assert error_message(b"x" * 600) == "x" * 500
    long_message = b'{"error":{"message":"' + b"y" * 700 + b'"}}'
    assert error_message(long_message) == "y" * 500


def test_error_message_redacts_the_configured_secret():
    assert error_message(b'{"error":{"message":"bad token hunter2hunter2"}}', "hunter2hunter2") == (
        "bad token [redacted]"
    )


def test_error_message_redacts_a_secret_cut_by_the_length_limit():
    secret = "s3cretTOKENvalue"
    message = error_message(b"x" * 495 + secret.encode() + b" rest", secret)
    assert message == "x" * 495 + "[reda"
    assert "s3cr" not in message


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("key sk-abcdef123456 rejected", "key [redacted] rejected"),
        ("sk-proj-Ab_12-34.xyz!", "[redacted]!"),
        ("sk-ant-api03-AAAAAAAAAAAA", "[redacted]"),
        ("ak-123456 and key-abcdefgh", "[redacted] and [redacted]"),
        ("sk-short is fine", "sk-short is fine"),
        ("task-abcdefgh is not a key", "task-abcdefgh is not a key"),
        ("monkey-business as usual", "monkey-business as usual"),
    ],
)
def test_redact_key_shapes(text, expected):
    assert redact(text, "") == expected


def test_redact_configured_secret_of_any_shape():
    assert redact("token=Zq9!pw and again Zq9!pw", "Zq9!pw") == (
        "token=[redacted] and again [redacted]"
    )


def test_openai_invalid_utf8_becomes_replacement_character():
    stream = b'data: {"choices":[{"index":0,"delta":{"content":"caf\xc3"}}]}\n\ndata: [DONE]\n\n'
    assert parse(openai(), stream) == [Delta(text="caf\ufffd"), Delta(finished=True)]


def test_ollama_invalid_utf8_is_a_malformed_line():
    _, exc = parse_until_error(ollama(), b'{"message":{"content":"caf\xc3"}}\n')
    assert isinstance(exc, ProviderStreamError)
    assert str(exc).startswith("malformed stream line: ")

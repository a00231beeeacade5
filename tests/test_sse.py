"""SSE frames as exact bytes, and reading events out of provider bodies."""

import random

from sseclient import SSEClient

from flask_stopwire.formats.sse import KEEPALIVE, event_data, events, frame, token_frame


def test_frame_without_id():
    assert frame("token", {"text": "Hello"}) == b'event: token\ndata: {"text":"Hello"}\n\n'


def test_frame_with_id():
    assert frame("token", {"text": "Hi"}, 7) == b'id: 7\nevent: token\ndata: {"text":"Hi"}\n\n'


def test_frame_with_id_zero():
    assert frame("start", {}, 0) == b"id: 0\nevent: start\ndata: {}\n\n"


def test_frame_json_is_compact():
    data = {"usage": {"prompt_tokens": 3, "completion_tokens": 1}, "list": [1, 2], "ok": True}
    assert frame("done", data) == (
        b'event: done\ndata: {"usage":{"prompt_tokens":3,"completion_tokens":1},'
        b'"list":[1,2],"ok":true}\n\n'
    )


def test_frame_keeps_unicode_unescaped():
    assert frame("token", {"text": "café ☕ 日本 👋"}) == (
        'event: token\ndata: {"text":"café ☕ 日本 👋"}\n\n'.encode()
    )


def test_frame_escapes_newlines_so_data_is_one_line():
    encoded = frame("token", {"text": "one\ntwo\r\nthree\rfour"})
    assert encoded == b'event: token\ndata: {"text":"one\\ntwo\\r\\nthree\\rfour"}\n\n'
    assert encoded.count(b"\n") == 3
    assert b"\r" not in encoded


def test_frame_round_trips_through_an_sse_client():
    data = {"text": "a\nb \u2028 c: d\n\ndata: e"}
    [event] = SSEClient([frame("token", data, 3)]).events()
    assert (event.id, event.event, event.data) == (
        "3",
        "token",
        '{"text":"a\\nb \u2028 c: d\\n\\ndata: e"}',
    )


def test_frame_of_a_plain_string():
    assert frame("error", "boom") == b'event: error\ndata: "boom"\n\n'


def test_keepalive_is_a_comment():
    assert KEEPALIVE == b": keepalive\n\n"
    assert list(SSEClient([KEEPALIVE]).events()) == []


def _read(*chunks: bytes) -> list[tuple[str, str]]:
    return [(event.event, event.data) for event in events(iter(chunks))]


STREAM = (
    b": keepalive\n\n"
    b"event: delta\ndata: one\n\n"
    b"data: two\ndata: lines\n\n" + "data: ünï ✓\n\n".encode()
)
EXPECTED = [("delta", "one"), ("message", "two\nlines"), ("message", "ünï ✓")]


def test_events_in_one_chunk():
    assert _read(STREAM) == EXPECTED


def test_events_split_at_every_byte_boundary():
    for cut in range(len(STREAM) + 1):
        assert _read(STREAM[:cut], STREAM[cut:]) == EXPECTED, f"split at byte {cut}"
    crlf = STREAM.replace(b"\n", b"\r\n")
    for cut in range(len(crlf) + 1):
        assert _read(crlf[:cut], crlf[cut:]) == EXPECTED, f"CRLF split at byte {cut}"


def test_events_byte_by_byte():
    assert _read(*(STREAM[i : i + 1] for i in range(len(STREAM)))) == EXPECTED


def test_events_drop_an_unterminated_last_event():
    assert _read(b"data: one\n\ndata: tw") == [("message", "one")]
    assert _read(b"data: one\n\ndata: two\n") == [("message", "one")]
    assert _read(b"data: one\n\ndata: two\r\n\r") == [("message", "one")]
    assert _read(b"data: one\n\ndata: two\r\n\r", b"\n") == [("message", "one"), ("message", "two")]


def test_events_drop_a_last_event_cut_inside_a_character():
    assert _read(b"data: one\n\n", "data: ü".encode()[:-1]) == [("message", "one")]


def test_events_replace_invalid_utf8():
    assert _read(b"data: a\xffb\n\n") == [("message", "a\ufffdb")]


def test_events_stop_reading_when_the_consumer_stops():
    def body():
        yield b"data: one\n\ndata: two\n\n"
        raise AssertionError("read past what was consumed")

    stream = events(body())
    assert next(stream).data == "one"
    stream.close()


def test_a_lone_surrogate_from_a_provider_cannot_break_a_frame():
    assert frame("token", {"text": "a\ud83db"}) == b'event: token\ndata: {"text":"a?b"}\n\n'


# -- event_data: the data of each event, what the OpenAI-compatible parser reads ---------


def _data(*chunks: bytes) -> list[str]:
    return list(event_data(iter(chunks)))


def test_event_data_is_what_events_gives_as_data():
    assert _data(STREAM) == [data for _, data in EXPECTED]


def test_event_data_split_at_every_byte_boundary_and_line_ending():
    for ending in (b"\n", b"\r\n"):
        stream = STREAM.replace(b"\n", ending)
        for cut in range(len(stream) + 1):
            assert _data(stream[:cut], stream[cut:]) == [d for _, d in EXPECTED], (ending, cut)


def test_event_data_agrees_with_sseclient_however_the_body_is_split():
    stream = (
        STREAM + b"data\n\ndata:x\ndata:  y\n\nid: 3\nretry: 5\ndatax: no\n\n\n\n"
        b"data: a\xffb\n\nevent: only\n\ndata: last\n\ndata: cut"
    )
    rng = random.Random(14)
    for variant in (stream, stream.replace(b"\n", b"\r"), stream.replace(b"\n", b"\r\n")):
        for _ in range(300):
            cuts = sorted(rng.sample(range(len(variant) + 1), rng.randint(0, 6)))
            ends = [*cuts, len(variant)]
            pieces = [variant[a:b] for a, b in zip([0, *cuts], ends, strict=True)]
            assert _data(*pieces) == [event.data for event in events(iter(pieces))], pieces


def test_event_data_drops_an_unterminated_last_event():
    assert _data(b"data: one\n\ndata: tw") == ["one"]
    assert _data(b"data: one\n\ndata: two\r\n\r") == ["one"]
    assert _data(b"data: one\n\ndata: two\r\n\r", b"\n") == ["one", "two"]
    assert _data(b"data: one\n\n", "data: ü".encode()[:-1]) == ["one"]


def test_event_data_replaces_invalid_utf8_and_keeps_a_character_split_across_chunks():
    assert _data(b"data: a\xffb\n\n") == ["a\ufffdb"]
    encoded = "data: ü ✓\n\n".encode()
    assert _data(encoded[:7], encoded[7:]) == ["ü ✓"]


def test_token_frame_is_the_token_event_frame():
    every_character = "".join(map(chr, [*range(0xD800), *range(0xE000, 0x110000)]))
    for text in ("Hello", 'a "quoted"\nline', "café ☕", "a\ud83db", every_character):
        assert token_frame(text, 9) == frame("token", {"text": text}, 9)


def test_event_data_of_one_event_a_chunk_is_what_sseclient_reads():
    """One event a chunk, the usual read, has a shortcut: it must read as the loop reads."""
    pieces = [
        b"data: plain\n\n",
        b"data:  two spaces\n\n",
        b"data: \n\n",
        b"data: a\xffb\n\n",
        b"data: cr\rinside\n\n",
        b"data: crlf\r\n\r\n",
        b"data: two\ndata: lines\n\n",
        b"data: first\n",  # an event's first line, then a whole-looking one that ends it
        b"data: second\n\n",
        b"data:nospace\n\n",
        b"datax: ignored\n\n",
        b"data: last\n\n",
    ]
    assert _data(*pieces) == [event.data for event in events(iter(pieces))]
    assert _data(*pieces[:4]) == ["plain", " two spaces", "", "a\ufffdb"]

"""SSE frames as exact bytes, and reading events out of provider bodies."""

from sseclient import SSEClient

from flask_stopwire.formats.sse import KEEPALIVE, events, frame


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

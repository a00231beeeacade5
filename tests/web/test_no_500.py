"""The inputs that once caused a 500, each now a 4xx (issue 11: "No 500 from any input").

One test per reproducer, in process. Broken chunked framing needs gunicorn's parser and
a raw socket, so it lives in tests/fuzz/test_framing.py next to the fuzzer that keeps
the whole class away.
"""

import pytest
from flask import Flask
from flask.testing import FlaskClient
from web_support import MODEL, api_error, openai_error

from flask_stopwire.formats.openai import relay_error_status

JSON = "application/json"
# Far past the recursion limit, as a 200 KB body: json.loads raised RecursionError.
DEEP_ARRAY = "[" * 100_000 + "]" * 100_000
DEEP_OBJECT = '{"a":' * 100_000 + "1" + "}" * 100_000


@pytest.mark.parametrize("body", [DEEP_ARRAY, DEEP_OBJECT], ids=["arrays", "objects"])
@pytest.mark.parametrize(
    "path",
    [
        "/api/chat",
        "/api/generations/gen_x/stop",
        "/api/conversations/conv_x/messages/msg_x/regenerate",
        "/api/conversations/conv_x/messages/msg_x/continue",
    ],
)
def test_deeply_nested_json_is_400(client: FlaskClient, path: str, body: str) -> None:
    response = client.post(path, data=body, content_type=JSON)
    assert "JSON object" in api_error(response, 400, "invalid_request")


@pytest.mark.parametrize("body", [DEEP_ARRAY, DEEP_OBJECT], ids=["arrays", "objects"])
def test_deeply_nested_json_is_400_on_v1(client: FlaskClient, body: str) -> None:
    openai_error(client.post("/v1/chat/completions", data=body, content_type=JSON), 400)


@pytest.mark.parametrize(
    "body",
    [
        '{"content": "cut emoji \\ud83d"}',
        '{"content": "hi", "conversation_id": "conv_\\udc00"}',
        '{"messages": [{"role": "user", "content": "\\ud800"}]}',
    ],
    ids=["content", "conversation_id", "messages"],
)
def test_a_lone_surrogate_is_400(client: FlaskClient, body: str) -> None:
    """What a browser sends after cutting an emoji in half; SQLite cannot encode it."""
    response = client.post("/api/chat", data=body, content_type=JSON)
    assert "lone surrogate" in api_error(response, 400, "invalid_request")


@pytest.mark.parametrize("seen_chars", [2**53, 2**63, 2**64 + 1, 10**30])
def test_a_huge_seen_chars_is_400(client: FlaskClient, seen_chars: int) -> None:
    """Past SQLite's 64-bit integers (OverflowError in amend_stop) and JavaScript's."""
    response = client.post("/api/generations/gen_x/stop", json={"seen_chars": seen_chars})
    assert "seen_chars" in api_error(response, 400, "invalid_request")


@pytest.mark.parametrize(
    "limit", ["\u00b2", "\u2460", "\u0663"], ids=["superscript-2", "circled-1", "arabic-3"]
)
def test_a_limit_in_non_ascii_digits_is_400(client: FlaskClient, limit: str) -> None:
    """`str.isdigit()` accepts all three; `int()` refuses the first two (the 500) and reads
    the third as 3. Only ASCII digits make a limit."""
    response = client.get("/api/conversations", query_string={"limit": limit})
    assert "limit" in api_error(response, 400, "invalid_request")


@pytest.mark.parametrize("role", [["user"], {"user": 1}, 1, None], ids=repr)
def test_a_non_string_role_on_v1_is_400(client: FlaskClient, role: object) -> None:
    """An unhashable role once failed the dict lookup of known roles."""
    body = {"model": MODEL, "messages": [{"role": role, "content": "hi"}]}
    openai_error(client.post("/v1/chat/completions", json=body), 400, param="messages[0]")


@pytest.mark.parametrize(
    "options", [3, "yes", ["include_usage"], {"include_usage": "yes"}, {"other": True}], ids=repr
)
def test_a_bad_stream_options_is_400_before_the_provider_is_called(
    client: FlaskClient, options: object
) -> None:
    """It was read only after the provider had answered. The test provider refuses every
    connection, so reaching it would be a 502 instead."""
    body = {
        "model": MODEL,
        "messages": [{"role": "user", "content": "hi"}],
        "stream": True,
        "stream_options": options,
    }
    openai_error(client.post("/v1/chat/completions", json=body), 400, param="stream_options")


def test_a_request_the_provider_refuses_is_the_callers_400() -> None:
    """Found by the fuzzer: no user turn, the provider's 400 became our 502."""
    assert relay_error_status({"type": "provider_bad_request", "message": "no user turn"}) == 400
    assert relay_error_status({"type": "provider_auth", "message": "our key"}) == 502


def test_a_streamed_body_over_the_limit_is_413(make_app) -> None:
    """Without Content-Length, werkzeug cut the body at the limit and the 413 became a 400
    (or a padded body passed); one byte more on the wire now makes it a 413."""
    app: Flask = make_app(STOPWIRE_MAX_BODY_BYTES=64)
    response = app.test_client().post(
        "/api/chat",
        data=b'{"content": "hi"}' + b" " * 100,
        headers={"Content-Type": JSON, "Transfer-Encoding": "chunked"},
        # What gunicorn says of a chunked body it decodes itself: no length, an end.
        environ_overrides={"wsgi.input_terminated": True},
    )
    api_error(response, 413, "request_too_large")


def test_a_newline_in_a_v1_path_is_an_openai_404(client: FlaskClient) -> None:
    # Found by the fuzzer: werkzeug's `path` converter stops at a newline, and the URL
    # missed every route for the host's HTML 404.
    openai_error(client.get("/v1/models/a%0Ab"), 404, "model", "model_not_found")
    openai_error(client.get("/v1/nothing%0A/x"), 404)


def test_a_newline_in_an_api_path_is_a_json_404(client: FlaskClient) -> None:
    api_error(client.get("/api/nothing%0A/x"), 404, "not_found")

"""POST /api/chat and /api/generations/<id>/stop: every way a request can be refused,
with its exact status and JSON error type; and unknown paths under /api."""

import json

import pytest
from flask import Flask
from flask.testing import FlaskClient
from web_support import OTHER, MakeApp, api_error, client_as, saved_turn
from werkzeug.test import TestResponse

JSON = "application/json"


def post_json(client: FlaskClient, url: str, body: object) -> TestResponse:
    """POST `body` encoded as JSON."""
    return client.post(url, data=json.dumps(body), content_type=JSON)


# -- POST /api/chat -----------------------------------------------------------------------


@pytest.mark.parametrize(
    "content_type",
    ["text/plain", "application/x-www-form-urlencoded", "multipart/form-data; boundary=x"],
)
def test_chat_refuses_anything_but_json_with_415(client: FlaskClient, content_type: str) -> None:
    response = client.post("/api/chat", data=b'{"content": "hi"}', content_type=content_type)
    api_error(response, 415, "unsupported_media_type")


def test_chat_without_a_content_type_is_415(client: FlaskClient) -> None:
    response = client.post("/api/chat", data=b'{"content": "hi"}')
    assert "Content-Type" not in response.request.headers
    api_error(response, 415, "unsupported_media_type")


@pytest.mark.parametrize("body", [b"", b"{not json", b"[1, 2]", b'"hi"', b"null", b"[" * 5000])
def test_chat_refuses_malformed_json_with_400(client: FlaskClient, body: bytes) -> None:
    response = client.post("/api/chat", data=body, content_type=JSON)
    assert "JSON object" in api_error(response, 400, "invalid_request")


USER_TURN = {"role": "user", "content": "hi"}


@pytest.mark.parametrize(
    ("body", "needle"),
    [
        ({}, "either"),
        ({"content": "hi", "messages": [USER_TURN]}, "either"),
        ({"content": 3}, '"content" must be a non-empty string'),
        ({"content": ""}, '"content" must be a non-empty string'),
        ({"content": " \n\t"}, '"content" must be a non-empty string'),
        ({"content": "\ud83d"}, "not valid Unicode"),
        ({"content": "hi", "conversation_id": 5}, '"conversation_id" must be'),
        ({"content": "hi", "conversation_id": ["conv_1"]}, '"conversation_id" must be'),
        ({"messages": "hi"}, '"messages" must be a non-empty list'),
        ({"messages": []}, '"messages" must be a non-empty list'),
        ({"messages": ["hi"]}, "messages[0] must be an object"),
        ({"messages": [{"role": "robot", "content": "x"}]}, "messages[0].role"),
        ({"messages": [{"role": 7, "content": "x"}]}, "messages[0].role"),
        ({"messages": [{"role": "user"}]}, "messages[0].content must be a string"),
        ({"messages": [{"role": "user", "content": 1}]}, "messages[0].content must be a string"),
        (
            {"messages": [USER_TURN, {"role": "assistant", "content": "b"}]},
            "the last message must be the user's",
        ),
        ({"messages": [{"role": "system", "content": "x"}]}, "the last message must be the user's"),
        ({"messages": [USER_TURN], "conversation_id": "conv_1"}, '"conversation_id" with'),
    ],
)
def test_chat_refuses_wrong_shapes_with_400(client: FlaskClient, body: dict, needle: str) -> None:
    assert needle in api_error(post_json(client, "/api/chat", body), 400, "invalid_request")


def test_chat_in_an_unknown_conversation_is_404(client: FlaskClient) -> None:
    response = post_json(client, "/api/chat", {"content": "hi", "conversation_id": "conv_nope"})
    assert "conv_nope" in api_error(response, 404, "not_found")


def test_chat_in_someone_elses_conversation_is_404(app: Flask, client: FlaskClient) -> None:
    theirs = saved_turn(app, OTHER)
    body = {"content": "hi", "conversation_id": theirs["conversation_id"]}
    api_error(post_json(client, "/api/chat", body), 404, "not_found")


def test_chat_while_an_answer_streams_in_the_conversation_is_409(
    app: Flask, client: FlaskClient, user: str
) -> None:
    busy = saved_turn(app, user, status="streaming")
    body = {"content": "hi", "conversation_id": busy["conversation_id"]}
    assert "streaming" in api_error(post_json(client, "/api/chat", body), 409, "conflict")


def test_a_body_over_the_limit_is_413(make_app: MakeApp) -> None:
    client = make_app(STOPWIRE_MAX_BODY_BYTES=100).test_client()
    over = b'{"content": "' + b"a" * 86 + b'"}'
    bad_at_limit = b"{" + b" " * 99  # read and parsed: the limit is not off by one
    assert (len(over), len(bad_at_limit)) == (101, 100)
    api_error(client.post("/api/chat", data=over, content_type=JSON), 413, "request_too_large")
    api_error(
        client.post("/api/chat", data=bad_at_limit, content_type=JSON), 400, "invalid_request"
    )
    stop = client.post("/api/generations/gen_x/stop", data=b" " * 101, content_type=JSON)
    api_error(stop, 413, "request_too_large")


def test_an_unreachable_provider_streams_error_then_done_and_saves_it(
    app: Flask, client: FlaskClient
) -> None:
    response = post_json(client, "/api/chat", {"content": "hi"})
    assert response.status_code == 200 and response.mimetype == "text/event-stream"
    frames = response.get_data(as_text=True).split("\n\n")
    events = [dict(line.split(": ", 1) for line in f.splitlines()) for f in frames if f]
    assert [e["event"] for e in events] == ["meta", "error", "done"]
    meta, error, done = (json.loads(e["data"]) for e in events)
    assert error["error"]["type"] == "provider_unreachable"
    assert (done["status"], done["reason"]) == ("error", "upstream_error")
    saved = client.get(f"/api/conversations/{meta['conversation_id']}").get_json()
    answer = saved["messages"][-1]
    assert (answer["id"], answer["status"], answer["content"]) == (meta["message_id"], "error", "")


# -- POST /api/generations/<id>/stop ------------------------------------------------------


@pytest.mark.parametrize("seen_chars", [-1, "12", 1.5, 2.0, True, False, [3], 2**53])
def test_stop_refuses_a_bad_seen_chars_with_400(client: FlaskClient, seen_chars: object) -> None:
    response = post_json(client, "/api/generations/gen_x/stop", {"seen_chars": seen_chars})
    assert "seen_chars" in api_error(response, 400, "invalid_request")


@pytest.mark.parametrize("body", [None, {}, {"seen_chars": None}, {"seen_chars": 0}])
def test_stop_of_an_unknown_generation_is_404(client: FlaskClient, body: object) -> None:
    if body is None:
        response = client.post("/api/generations/gen_nope/stop")
    else:
        response = post_json(client, "/api/generations/gen_nope/stop", body)
    assert "gen_nope" in api_error(response, 404, "not_found")


def test_stop_refuses_a_non_json_body_with_415_and_malformed_json_with_400(
    client: FlaskClient,
) -> None:
    form = client.post(
        "/api/generations/gen_x/stop", data="seen_chars=3", content_type="text/plain"
    )
    api_error(form, 415, "unsupported_media_type")
    broken = client.post("/api/generations/gen_x/stop", data="{", content_type=JSON)
    api_error(broken, 400, "invalid_request")


def test_a_late_stop_after_a_disconnect_is_recorded_as_the_users(
    app: Flask, client: FlaskClient, user: str
) -> None:
    turn = saved_turn(
        app, user, status="stopped", reason="client_disconnect", content="Hello world"
    )
    url = f"/api/generations/{turn['generation_id']}/stop"
    summary = post_json(client, url, {"seen_chars": 5}).get_json()
    assert (summary["status"], summary["reason"]) == ("stopped", "user_stop")
    assert summary["receipt"]["signal"] == "user_stop"
    saved = client.get(f"/api/conversations/{turn['conversation_id']}").get_json()
    assert saved["messages"][-1]["content"] == "Hello"


def test_someone_elses_saved_generation_is_404_to_a_stop(app: Flask, client: FlaskClient) -> None:
    turn = saved_turn(app, OTHER, status="stopped", reason="client_disconnect")
    response = client.post(f"/api/generations/{turn['generation_id']}/stop")
    api_error(response, 404, "not_found")


# -- anything else under /api -------------------------------------------------------------


@pytest.mark.parametrize("method", ["GET", "POST", "PUT", "PATCH", "DELETE"])
@pytest.mark.parametrize("path", ["/api/", "/api/nothing/here", "/api/chat/extra"])
def test_unknown_api_paths_are_json_404(client: FlaskClient, method: str, path: str) -> None:
    api_error(client.open(path, method=method), 404, "not_found")


@pytest.mark.parametrize(
    ("method", "path", "allowed"),
    [
        ("GET", "/api/chat", {"POST"}),
        ("DELETE", "/api/chat", {"POST"}),
        ("GET", "/api/generations/gen_x/stop", {"POST"}),
        ("PUT", "/api/conversations", {"GET"}),
        ("POST", "/api/conversations/conv_x", {"GET", "DELETE"}),
        ("GET", "/api/conversations/c/messages/m/regenerate", {"POST"}),
    ],
)
def test_wrong_methods_are_json_405_with_allow(
    client: FlaskClient, method: str, path: str, allowed: set[str]
) -> None:
    response = client.open(path, method=method)
    api_error(response, 405, "method_not_allowed")
    assert set(response.headers["Allow"].replace(" ", "").split(",")) >= allowed


def test_the_identity_cookie_is_issued_to_a_new_browser(app: Flask) -> None:
    client = app.test_client()
    assert client.get("/api/conversations").status_code == 200
    with client.session_transaction() as session:
        issued = session["stopwire_user"]
    assert issued.startswith("browser:") and len(issued) > len("browser:") + 16


def test_a_stop_is_never_refused_by_the_rate_limit(make_app: MakeApp, user: str) -> None:
    """Over STOPWIRE_RATE_LIMIT every other request is a 429, but a stop ends what costs
    money: it is neither refused nor counted."""
    client = client_as(make_app(STOPWIRE_RATE_LIMIT="2/minute"), user)
    stop = "/api/generations/gen_nothing_here/stop"
    for _ in range(5):
        assert client.post(stop, json={}).status_code == 404  # not 429
    assert client.get("/api/conversations").status_code == 200
    assert client.get("/api/conversations").status_code == 200
    refused = client.get("/api/conversations")
    assert refused.status_code == 429 and refused.json["error"]["type"] == "rate_limited"
    assert client.post(stop, json={}).status_code == 404  # still not refused

"""Bad input answers JSON errors `{"error": {"type", "message"}}`, never HTML or a 500."""

import pytest
import requests
from wire import AUTH


def assert_json_error(response: requests.Response, status: int, error_type: str) -> str:
    assert response.status_code == status, response.text
    assert response.headers["content-type"] == "application/json"
    error = response.json()["error"]
    assert error["type"] == error_type
    assert error["message"]
    return error["message"]


@pytest.mark.parametrize(
    ("body", "needle"),
    [
        (b"{not json", "JSON object"),
        (b"[1, 2]", "JSON object"),
        (b"{}", "either"),
        (b'{"content": 3}', "non-empty string"),
        (b'{"content": "  "}', "non-empty string"),
        (b'{"content": "a", "messages": []}', "either"),
        (b'{"messages": "hi"}', "non-empty list"),
        (b'{"messages": [{"role": "robot", "content": "x"}]}', "role"),
        (b'{"messages": [{"role": "user", "content": 1}]}', "content"),
        (
            b'{"messages": [{"role": "user", "content": "a"}, {"role": "assistant", '
            b'"content": "b"}]}',
            "last message",
        ),
        (b'{"messages": ["hi"]}', "object"),
    ],
)
def test_malformed_chat_bodies_are_400(server, body, needle):
    response = requests.post(
        f"{server.url}/api/chat",
        data=body,
        headers={**AUTH, "Content-Type": "application/json"},
        timeout=10,
    )
    assert needle in assert_json_error(response, 400, "invalid_request")


@pytest.mark.parametrize(
    "content_type",
    ["application/x-www-form-urlencoded", "multipart/form-data; boundary=x", "text/plain"],
)
def test_cross_site_form_posts_are_415(server, content_type):
    response = requests.post(
        f"{server.url}/api/chat",
        data=b'{"content": "hi"}',
        headers={**AUTH, "Content-Type": content_type},
        timeout=10,
    )
    assert_json_error(response, 415, "unsupported_media_type")


def test_bodies_over_the_limit_are_413(server):
    big = b'{"content": "' + b"a" * (1024 * 1024 + 10) + b'"}'
    response = requests.post(
        f"{server.url}/api/chat",
        data=big,
        headers={**AUTH, "Content-Type": "application/json"},
        timeout=10,
    )
    assert_json_error(response, 413, "request_too_large")


def test_unknown_generation_is_404(server):
    response = requests.post(
        f"{server.url}/api/generations/gen_nope/stop", headers=AUTH, timeout=10
    )
    assert "gen_nope" in assert_json_error(response, 404, "not_found")


@pytest.mark.parametrize("seen_chars", [-1, "12", 1.5, True])
def test_bad_seen_chars_is_400(server, seen_chars):
    response = requests.post(
        f"{server.url}/api/generations/gen_nope/stop",
        json={"seen_chars": seen_chars},
        headers=AUTH,
        timeout=10,
    )
    assert "seen_chars" in assert_json_error(response, 400, "invalid_request")


def test_unknown_conversation_is_404(server):
    response = requests.post(
        f"{server.url}/api/chat",
        json={"content": "hi", "conversation_id": "c_1"},
        headers=AUTH,
        timeout=10,
    )
    assert "conversation" in assert_json_error(response, 404, "not_found")


def test_unknown_api_paths_are_json_404(server):
    for method in ("GET", "POST", "DELETE"):
        response = requests.request(
            method, f"{server.url}/api/nothing/here", headers=AUTH, timeout=10
        )
        assert_json_error(response, 404, "not_found")


def test_wrong_method_is_json_405(server):
    response = requests.get(f"{server.url}/api/chat", headers=AUTH, timeout=10)
    assert_json_error(response, 405, "method_not_allowed")
    assert "POST" in response.headers["allow"]

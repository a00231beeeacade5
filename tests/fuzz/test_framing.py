"""What only a raw socket to the live gunicorn shows: broken HTTP framing is a 400 (never
a 500), a refused body is still read so the client sees its 413 instead of a reset, and
a request the provider refuses is the caller's 400, not a 502."""

import http.client
import json
import socket
from typing import Any

import pytest
import requests

from tests.server.conftest import Server

MB = 1024 * 1024


def exchange(server: Server, head: str, body: bytes) -> tuple[int, dict[str, Any]]:
    """Send a whole request as raw bytes, then read the response: (status, JSON body)."""
    with socket.create_connection(("127.0.0.1", server.port), timeout=10) as sock:
        sock.sendall(head.replace("\n", "\r\n").encode() + b"\r\n" + body)
        response = http.client.HTTPResponse(sock)
        response.begin()
        assert response.getheader("Content-Type") == "application/json"
        return response.status, json.loads(response.read())


def chunked_head(path: str, auth: dict[str, str]) -> str:
    return (
        f"POST {path} HTTP/1.1\nHost: 127.0.0.1\nAuthorization: {auth['Authorization']}\n"
        "Content-Type: application/json\nTransfer-Encoding: chunked\n"
    )


@pytest.mark.parametrize("path", ["/api/chat", "/v1/chat/completions"])
@pytest.mark.parametrize(
    "chunks",
    [
        b'zz\r\n{"content": "hi"}\r\n0\r\n\r\n',  # a chunk size that is not hexadecimal
        b'11\r\n{"content": "hi"}XX0\r\n\r\n',  # a chunk without its CRLF terminator
    ],
    ids=["bad-chunk-size", "missing-terminator"],
)
def test_malformed_chunked_framing_is_a_400(
    live: Server, auth: dict[str, str], path: str, chunks: bytes
) -> None:
    status, body = exchange(live, chunked_head(path, auth), chunks)
    assert status == 400
    assert "malformed HTTP framing" in body["error"]["message"]


@pytest.mark.parametrize(
    ("megabytes", "chunked"),
    [(2, False), (16, False), (16, True)],
    ids=["2MB", "16MB", "16MB-chunked"],
)
def test_a_body_over_the_limit_is_read_and_answered_413(
    live: Server, auth: dict[str, str], megabytes: int, chunked: bool
) -> None:
    """Against the 1 MB default, with `Connection: close` (gunicorn then reads nothing more
    itself): the server drains the rest, so no reset cuts the 413. Loopback buffers hold a
    few MB, so only the larger bodies would show a reset if the server stopped reading."""
    payload = b'{"content": "' + b"a" * (megabytes * MB) + b'"}'
    head = f"POST /api/chat HTTP/1.1\nHost: 127.0.0.1\nAuthorization: {auth['Authorization']}\n"
    head += "Content-Type: application/json\nConnection: close\n"
    if chunked:
        head += "Transfer-Encoding: chunked\n"
        parts = (payload[i : i + 65536] for i in range(0, len(payload), 65536))
        body = b"".join(b"%x\r\n%s\r\n" % (len(part), part) for part in parts) + b"0\r\n\r\n"
    else:
        head += f"Content-Length: {len(payload)}\n"
        body = payload
    status, answer = exchange(live, head, body)
    assert status == 413
    assert answer["error"]["type"] == "request_too_large"


@pytest.mark.parametrize("stream", [False, True])
def test_a_request_the_provider_refuses_is_the_callers_400(
    live: Server, auth: dict[str, str], stream: bool
) -> None:
    """The demo model, like Anthropic, wants a user turn; its 400 is passed on, not a 502."""
    response = requests.post(
        f"{live.url}/v1/chat/completions",
        json={
            "model": "stopwire-demo",
            "messages": [{"role": "assistant", "content": "no question here"}],
            "stream": stream,
        },
        headers=auth,
        timeout=10,
    )
    assert response.status_code == 400, response.text
    error = response.json()["error"]
    assert (error["type"], error["code"]) == ("invalid_request_error", "provider_bad_request")

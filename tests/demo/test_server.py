"""The demo provider's records, error bodies and streamed answers: in this process, over a
socket pair or, for a streamed answer, a loopback port."""

import http.client
import json
import time
from collections.abc import Callable, Iterator
from dataclasses import asdict

import gevent
import pytest
from gevent import socket
from gevent.server import StreamServer

from flask_stopwire.demo.script import Script
from flask_stopwire.demo.server import MAX_BODY, RECORDS_KEPT, DemoServer

QUESTION = [{"role": "user", "content": "Hello"}]


def complete(server: DemoServer, body: dict, headers: str = "") -> tuple[int, dict]:
    """POST one chat completion to the demo's connection handler; its status and JSON body."""
    ours, theirs = socket.socketpair()
    handler = gevent.spawn(server.handle, theirs, None)
    payload = json.dumps(body).encode()
    ours.sendall(
        f"POST /v1/chat/completions HTTP/1.1\r\nHost: demo\r\n{headers}"
        f"Content-Type: application/json\r\nContent-Length: {len(payload)}\r\n\r\n".encode()
        + payload
    )
    reader = ours.makefile("rb")
    status = int(reader.readline().split()[1])
    length = 0
    while (line := reader.readline()) != b"\r\n":
        name, _, value = line.decode().partition(":")
        if name.lower() == "content-length":
            length = int(value)
    answer = json.loads(reader.read(length))
    reader.close()
    ours.close()
    handler.join(timeout=5)
    assert handler.dead
    return status, answer


@pytest.fixture
def demo() -> DemoServer:
    return DemoServer(Script(ttft=0, gap=0, tokens=3), record_text=True)


def test_a_record_keeps_every_option_it_was_sent(demo):
    options = {
        "temperature": 0,
        "top_p": 0.5,
        "max_tokens": 9,
        "max_completion_tokens": 8,
        "stop": ["END"],
        "seed": 7,
        "user": "u-42",
        "logit_bias": {"50256": -100},  # anything else a client sends is recorded too
    }
    body = {
        "model": "stopwire-demo",
        "messages": QUESTION,
        "stream": False,
        "stream_options": {"include_usage": True},
        **options,
    }
    status, answer = complete(demo, body)
    assert status == 200 and answer["object"] == "chat.completion"
    (record,) = demo.records
    assert record.messages == QUESTION
    assert record.options == options


def test_a_record_without_options(demo):
    complete(demo, {"model": "stopwire-demo", "messages": QUESTION})
    assert demo.records[0].options == {}


def test_a_401_quotes_back_the_key_it_was_sent(demo):
    body = {"messages": [{"role": "user", "content": "Hi [demo status=401]"}]}
    status, answer = complete(demo, body, "Authorization: Bearer sk-demo-secret-1\r\n")
    assert status == 401
    assert answer["error"]["message"] == (
        "demo model injected HTTP 401: incorrect API key provided: sk-demo-secret-1"
    )
    assert complete(demo, body)[1]["error"]["message"] == (
        "demo model injected HTTP 401: no API key provided"
    )


def test_other_error_statuses_quote_no_key(demo):
    body = {"messages": [{"role": "user", "content": "Hi [demo status=429]"}]}
    status, answer = complete(demo, body, "Authorization: Bearer sk-demo-secret-1\r\n")
    assert status == 429
    assert answer["error"]["message"] == "demo model injected HTTP 429"


def test_without_the_test_switch_no_message_text_is_kept():
    demo = DemoServer(Script(ttft=0, gap=0, tokens=3))
    status, _ = complete(demo, {"model": "m", "messages": QUESTION, "temperature": 1})
    assert status == 200
    (record,) = demo.records
    assert (record.prompt, record.messages, record.options) == ("", [], {"temperature": 1})
    assert "Hello" not in json.dumps([asdict(r) for r in demo.records])


def test_only_the_newest_records_are_kept(demo):
    for _ in range(RECORDS_KEPT + 5):
        complete(demo, {"model": "m", "messages": QUESTION})
    assert len(demo.records) == RECORDS_KEPT
    assert demo.records[0].id == 6  # the five oldest were forgotten


def test_a_body_over_the_limit_is_never_read():
    ours, theirs = socket.socketpair()
    handler = gevent.spawn(DemoServer(Script()).handle, theirs, None)
    ours.sendall(
        f"POST /v1/chat/completions HTTP/1.1\r\nContent-Length: {MAX_BODY + 1}\r\n\r\n".encode()
    )
    handler.join(timeout=5)
    assert handler.dead
    assert ours.recv(100) == b""  # closed without an answer or a read of the body
    ours.close()


@pytest.fixture
def serve_script() -> Iterator[Callable[[Script], tuple[DemoServer, tuple[str, int]]]]:
    """Serve the demo with a script on a loopback port (a streamed answer needs TCP: on a
    socket pair its check for the client's departure would wait for bytes)."""
    started: list[StreamServer] = []

    def start(script: Script) -> tuple[DemoServer, tuple[str, int]]:
        demo = DemoServer(script)
        started.append(StreamServer(("127.0.0.1", 0), demo.handle))
        started[-1].start()
        return demo, started[-1].address

    yield start
    for server in started:
        server.stop(timeout=1)


def open_stream(address: tuple[str, int], content: str) -> socket.socket:
    """Ask the demo at `address` for a streamed answer to `content`: our end of the connection."""
    ours = socket.create_connection(address)
    payload = json.dumps(
        {"model": "m", "stream": True, "messages": [{"role": "user", "content": content}]}
    ).encode()
    ours.sendall(
        f"POST /v1/chat/completions HTTP/1.1\r\nContent-Length: {len(payload)}\r\n\r\n".encode()
        + payload
    )
    return ours


def events(sock: socket.socket) -> list[dict]:
    """The JSON of every `data:` line of the streamed response on `sock`, up to `[DONE]`."""
    response = http.client.HTTPResponse(sock)
    response.begin()
    lines = [line[len(b"data: ") :] for line in response.read().split(b"\n") if line]
    assert lines.pop() == b"[DONE]"
    return [json.loads(line) for line in lines]


def test_a_streamed_answer_is_openai_chunks_of_its_words(serve_script):
    said = 'She said "stop",\ta back\\slash, é and 🚀 </script>'
    _, address = serve_script(Script(ttft=0, gap=0))
    with open_stream(address, f"{said} [demo echo]") as ours:
        *chunks, last = events(ours)
    assert "".join(c["choices"][0]["delta"]["content"] for c in chunks) == said
    assert {(c["id"], c["object"], c["model"], c["created"]) for c in chunks} == {
        ("chatcmpl-demo", "chat.completion.chunk", "stopwire-demo", chunks[0]["created"])
    }
    assert last["choices"] == [{"index": 0, "delta": {}, "finish_reason": "stop"}]


def test_a_client_leaving_during_a_silence_is_recorded_at_once(serve_script):
    demo, address = serve_script(Script(ttft=0, gap=10, tokens=3))
    ours = open_stream(address, "Hello")
    received = b""
    while b"data: " not in received:
        received += ours.recv(65536)
    closed_at = time.monotonic()
    ours.close()
    with gevent.Timeout(5):
        while not demo.records[0].ended_at:
            gevent.sleep(0.01)
    (record,) = demo.records
    assert (record.ended, record.tokens_sent) == ("client_closed", 1)
    assert 0 <= record.client_closed_at - closed_at < 0.5  # not at the next token, 10 s on

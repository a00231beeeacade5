"""The WebSocket transport end to end: real gunicorn (gevent workers), real sockets.

The client is wsproto over a plain socket. A thread reads it and answers the server's
pings (every heartbeat, 0.3 s here: a socket that misses a pong is closed), so a test can
wait on the provider's records with the socket open; it leaves by a close frame, or by
RST like a crashed client.
"""

import json
import queue
import select
import signal
import socket
import struct
import threading
import time
import uuid
from collections.abc import Callable
from typing import Any
from urllib.parse import urlsplit

import pytest
import requests
from wire import AUTH
from wsproto import ConnectionType, WSConnection
from wsproto.connection import ConnectionState
from wsproto.events import (
    AcceptConnection,
    CloseConnection,
    Ping,
    RejectConnection,
    RejectData,
    Request,
    TextMessage,
)

from tests.server.conftest import Server  # by package: `conftest` may be another directory's

SOON_S = 1.0  # "closed at once", generously
CLOSED = object()  # what the reader queues once the socket ended
LONG = "[demo tokens=300 gap=0.02]"  # runs 6 s unless stopped


def marker() -> str:
    return uuid.uuid4().hex[:12]


class Client:
    """One WebSocket to `/api/ws`; `status` is 101, or the refused handshake's status."""

    def __init__(
        self, base_url: str, headers: dict[str, str] | None = None, rcvbuf: int | None = None
    ):
        parts = urlsplit(base_url)
        self.sock = socket.socket()
        if rcvbuf is not None:  # a small window: the server's writes back up
            self.sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, rcvbuf)
        self.sock.settimeout(10)
        self.sock.connect((parts.hostname, parts.port))
        self.conn = WSConnection(ConnectionType.CLIENT)
        self.lock = threading.RLock()  # wsproto's state: the reader and the test share it
        self.inbox: queue.Queue = queue.Queue()
        self.pings = 0
        self.close_code: int | None = None
        self._leaving = False
        self.stalled = False  # the reader reads nothing meanwhile
        extra = [
            (k.encode(), v.encode()) for k, v in (AUTH if headers is None else headers).items()
        ]
        host = f"{parts.hostname}:{parts.port}"
        self.sock.sendall(self.conn.send(Request(host=host, target="/api/ws", extra_headers=extra)))
        self.status, self.error = self._handshake()
        self._reader = threading.Thread(target=self._read, daemon=True)
        if self.status == 101:
            self._reader.start()

    def __enter__(self) -> "Client":
        return self

    def __exit__(self, *exc: object) -> None:
        self._leaving = True
        if self._reader.is_alive():
            self._reader.join(5)
        self.sock.close()

    def send(self, message: Any) -> None:
        """A JSON message (a string is sent as it is)."""
        data = message if isinstance(message, str) else json.dumps(message)
        with self.lock:
            self.sock.sendall(self.conn.send(TextMessage(data=data)))

    def receive(self, timeout: float = 10.0) -> dict:
        message = self.inbox.get(timeout=max(timeout, 0.01))
        if message is CLOSED:
            raise EOFError(f"the socket closed ({self.close_code})")
        return message

    def until(self, predicate: Callable[[dict], bool], timeout: float = 15.0) -> list[dict]:
        """Messages up to the first that `predicate` accepts, that one included."""
        deadline = time.monotonic() + timeout
        seen = [self.receive(deadline - time.monotonic())]
        while not predicate(seen[-1]):
            seen.append(self.receive(deadline - time.monotonic()))
        return seen

    def prompt(self, content: str, **fields: Any) -> dict:
        """Send a prompt and return its `meta`."""
        self.send({"type": "prompt", "content": content, **fields})
        meta = self.receive()
        assert meta["type"] == "meta", meta
        return meta

    def close_frame(self) -> float:
        """Send a close frame (as a closed tab does); returns the monotonic time."""
        at = time.monotonic()
        with self.lock:
            self.sock.sendall(self.conn.send(CloseConnection(code=1000)))
        return at

    def close_rst(self) -> float:
        """Abort the connection (RST), like a crashed client; returns when."""
        self._leaving = True
        self._reader.join(5)  # it must not hold the socket while it closes
        self.sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
        at = time.monotonic()
        self.sock.close()
        return at

    def _handshake(self) -> tuple[int, dict | None]:
        status, body = 0, b""
        while True:
            self.conn.receive_data(self.sock.recv(65536) or None)
            for event in self.conn.events():
                if isinstance(event, AcceptConnection):
                    return 101, None
                if isinstance(event, RejectConnection):
                    status = event.status_code
                    if not event.has_body:
                        return status, None
                if isinstance(event, RejectData):
                    body += event.data
                    if event.body_finished:
                        return status, json.loads(body)

    def _read(self) -> None:
        parts: list[str] = []
        try:
            while not self._leaving:
                if self.stalled or not select.select([self.sock], [], [], 0.05)[0]:
                    time.sleep(0.01 if self.stalled else 0)
                    continue
                data = self.sock.recv(65536)
                with self.lock:
                    self.conn.receive_data(data or None)
                    for event in self.conn.events():
                        if isinstance(event, TextMessage):
                            parts.append(event.data)
                            if event.message_finished:
                                self.inbox.put(json.loads("".join(parts)))
                                parts = []
                        elif isinstance(event, Ping):
                            self.pings += 1
                            self.sock.sendall(self.conn.send(event.response()))
                        elif isinstance(event, CloseConnection):
                            self.close_code = event.code
                            if self.conn.state == ConnectionState.REMOTE_CLOSING:
                                self.sock.sendall(self.conn.send(event.response()))
                            return
                if not data:
                    return
        except OSError:
            return
        finally:
            self.inbox.put(CLOSED)


def text_of(messages: list[dict], generation_id: str) -> str:
    return "".join(
        m["text"] for m in messages if m["type"] == "token" and m["generation_id"] == generation_id
    )


def answer_row(server: Server, generation_id: str) -> dict:
    """The saved answer, once it is no longer saved as streaming."""
    deadline = time.monotonic() + 5
    while True:
        rows = server.query(
            "SELECT content, status, reason FROM messages WHERE generation_id = ?",
            (generation_id,),
        )
        if rows and rows[0]["status"] != "streaming":
            return rows[0]
        assert time.monotonic() < deadline, rows
        time.sleep(0.02)


def browser_cookie(server: Server, path: str = "/") -> dict[str, str]:
    """The identity cookie a browser gets (from the page, or any API call without keys)."""
    response = requests.get(f"{server.url}{path}", timeout=5)
    assert response.cookies.get("stopwire"), response.headers
    return {"Cookie": f"stopwire={response.cookies['stopwire']}"}


def is_done(generation_id: str) -> Callable[[dict], bool]:
    return lambda m: m["type"] == "done" and m["generation_id"] == generation_id


def test_a_prompt_streams_meta_tokens_and_done_with_the_text_saved(server, upstream):
    prompt = marker()
    with Client(server.url) as client:
        assert client.status == 101
        meta = client.prompt(f"{prompt} [demo tokens=8 gap=0.005]")
        generation_id = meta["generation_id"]
        assert generation_id.startswith("gen_")
        assert meta["conversation_id"].startswith("conv_")
        assert meta["message_id"].startswith("msg_")
        messages = client.until(is_done(generation_id))
        tokens, done = messages[:-1], messages[-1]
        assert {m["type"] for m in tokens} == {"token"}
        assert all(m["generation_id"] == generation_id for m in tokens)
        # Each id is how many characters were sent once that token is (what resume takes).
        assert [m["id"] for m in tokens] == [
            len(text_of(tokens[: i + 1], generation_id)) for i in range(len(tokens))
        ]
        assert done["status"] == "complete" and done["reason"] is None
        assert done["conversation_id"] == meta["conversation_id"]
        assert done["usage"]["completion_tokens"] == 8
        text = text_of(tokens, generation_id)
        assert len(text.split()) == 8
        assert answer_row(server, generation_id)["content"] == text
        assert upstream.ended(prompt)["ended"] == "complete"
        # The next turn of the same conversation, on the same socket.
        again = client.prompt("and then? [demo tokens=2]", conversation_id=meta["conversation_id"])
        assert again["conversation_id"] == meta["conversation_id"]
        assert client.until(is_done(again["generation_id"]))[-1]["status"] == "complete"


def test_a_stateless_prompt_and_pings_every_heartbeat(server, upstream):
    prompt = marker()
    with Client(server.url) as client:
        message = {"role": "user", "content": f"{prompt} [demo tokens=3]"}
        client.send({"type": "prompt", "messages": [message]})
        meta = client.receive()
        assert meta["type"] == "meta" and meta["conversation_id"] is None
        done = client.until(is_done(meta["generation_id"]))[-1]
        assert done["status"] == "complete"
        assert upstream.ended(prompt)["ended"] == "complete"
        pings = client.pings
        time.sleep(1.0)  # idle: only pings (0.3 s heartbeat) keep it
        assert client.pings - pings >= 2
        assert client.prompt("still there? [demo tokens=1]")["type"] == "meta"


def test_a_client_that_answers_no_ping_is_dropped_and_its_answer_stopped(server, upstream):
    prompt = marker()
    with Client(server.url) as client:
        client.prompt(f"{prompt} [demo tokens=50 gap=0.01 silence=3:30]")
        client.until(lambda m: m["type"] == "token")
        stalled_at = time.monotonic()
        client.stalled = True  # reads nothing, so answers no ping: a frozen tab
        record = upstream.ended(prompt, timeout=10)
        # The next ping finds the last one unanswered: at most two heartbeats (0.3 s).
        assert record["client_closed_at"] - stalled_at < 2 * 0.3 + SOON_S
        client.stalled = False
        with pytest.raises(EOFError):
            while True:
                client.receive(timeout=5)
        assert client.close_code in (1008, None)  # told, if the frame got through


def test_cancel_stops_its_own_answer_at_once_and_the_other_streams_on(server, upstream):
    first, second = marker(), marker()
    with Client(server.url) as client:
        a = client.prompt(f"{first} {LONG}")["generation_id"]
        b = client.prompt(f"{second} [demo tokens=40 gap=0.02]")["generation_id"]
        seen: list[dict] = []
        while not (text_of(seen, a) and text_of(seen, b)):
            seen.append(client.receive())
        seen_chars = len(text_of(seen, a))
        cancelled_at = time.monotonic()
        client.send({"type": "cancel", "generation_id": a, "seen_chars": seen_chars})
        rest = client.until(is_done(a))
        record = upstream.ended(first)
        assert record["ended"] == "client_closed"
        assert record["client_closed_at"] - cancelled_at < SOON_S
        assert rest[-1]["status"] == "stopped" and rest[-1]["reason"] == "user_stop"
        assert rest[-1]["receipt"]["signal"] == "user_stop"
        rest += client.until(is_done(b))
        assert rest[-1]["status"] == "complete"
        # A message after both: no second `done` of the cancelled answer came meanwhile.
        client.send({"type": "nope"})
        rest += client.until(lambda m: m["type"] == "error")
        assert sum(m["type"] == "done" and m["generation_id"] == a for m in rest) == 1
        assert answer_row(server, a)["content"] == text_of(seen, a)  # cut to seen_chars
        whole = text_of(seen + rest, b)
        assert len(whole.split()) == 40 and answer_row(server, b)["content"] == whole
        assert upstream.ended(second)["ended"] == "complete"


@pytest.mark.parametrize("close", ["close_frame", "close_rst"])
@pytest.mark.parametrize("script", [LONG, "[demo tokens=50 gap=0.01 silence=3:30]"])
def test_closing_the_socket_closes_the_provider(server, upstream, close, script):
    prompt = marker()
    with Client(server.url) as client:
        generation_id = client.prompt(f"{prompt} {script}")["generation_id"]
        client.until(lambda m: m["type"] == "token" and m["id"] > 10)
        time.sleep(0.1)  # with the silence: well into it, nothing is being sent
        closed_at = getattr(client, close)()
        record = upstream.ended(prompt)
        assert record["ended"] == "client_closed"
        assert record["client_closed_at"] - closed_at < SOON_S
        row = answer_row(server, generation_id)
        assert (row["status"], row["reason"]) == ("stopped", "client_disconnect")
        if close == "close_frame":
            with pytest.raises(EOFError):
                client.until(lambda m: False, timeout=5)
            assert client.close_code == 1000  # the server answered the close frame
    assert "Traceback" not in server.output()


@pytest.fixture(scope="module")
def patient(upstream):
    """A server whose pings are far apart: a client may stop reading for a while."""
    process = Server(upstream.url, STOPWIRE_HEARTBEAT_S="10")
    yield process
    process.close()


def test_big_tokens_of_many_answers_reach_a_stalled_reader_whole(patient, upstream):
    """Frames of 400 kB from six greenlets at once, more than the socket buffers hold
    while the client reads nothing: writes block part-way, and must neither be cut
    short nor interleave with one another."""
    contents = [f"{marker()} {c * 400_000} {c.upper() * 400_000}" for c in "abcdef"]
    with Client(patient.url, rcvbuf=4096) as client:
        client.stalled = True
        for content in contents:
            message = {"role": "user", "content": f"{content} [demo echo gap=0.01]"}
            client.send({"type": "prompt", "messages": [message]})
        time.sleep(1.5)
        client.stalled = False
        messages = [client.receive(30)]
        while sum(m["type"] == "done" for m in messages) < len(contents):
            messages.append(client.receive(30))
        ids = [m["generation_id"] for m in messages if m["type"] == "meta"]  # in prompt order
        assert all(m["status"] == "complete" for m in messages if m["type"] == "done")
        for generation_id, content in zip(ids, contents, strict=True):
            assert text_of(messages, generation_id) == content


def test_bad_messages_get_errors_and_the_socket_stays_usable(server, upstream):
    too_large = json.dumps({"type": "prompt", "content": "x" * (1024 * 1024)})
    bad = [
        ("{not json", 400, "JSON object"),
        ("[1, 2]", 400, "JSON object"),
        ({"type": "dance"}, 400, '"type"'),
        ({"content": "no type"}, 400, '"type"'),
        ({"type": ["prompt"]}, 400, '"type"'),
        ({"type": "prompt"}, 400, '"content"'),
        ({"type": "prompt", "content": "   "}, 400, '"content"'),
        ({"type": "prompt", "content": "x", "resume_grace_s": -1}, 400, "resume_grace_s"),
        ({"type": "prompt", "content": "x", "on_stop": "drop"}, 400, "on_stop"),
        ({"type": "prompt", "messages": []}, 400, "messages"),
        (too_large, 413, "at most"),
        ({"type": "cancel"}, 400, "generation_id"),
        ({"type": "cancel", "generation_id": "gen_x", "seen_chars": -1}, 400, "seen_chars"),
        ({"type": "resume", "generation_id": "gen_x", "last_event_id": "x1"}, 400, "last_event"),
        ({"type": "resume", "generation_id": "gen_x", "last_event_id": True}, 400, "last_event"),
    ]
    with Client(server.url) as client:
        for message, status, words in bad:
            client.send(message)
            error = client.receive()
            assert error["type"] == "error" and error["status"] == status, (message, error)
            assert error["error"]["type"] in ("invalid_request", "request_too_large")
            assert words in error["error"]["message"], (message, error)
        prompt = marker()
        meta = client.prompt(f"{prompt} [demo tokens=3]")
        assert client.until(is_done(meta["generation_id"]))[-1]["status"] == "complete"


def test_a_message_over_the_hard_limit_closes_the_socket(server):
    with Client(server.url) as client:
        client.send("x" * (4 * 1024 * 1024 + 1))  # 4 times STOPWIRE_MAX_BODY_BYTES: not read
        with pytest.raises(EOFError):
            client.receive()
        assert client.close_code == 1009  # "message too big"


def test_api_errors_name_what_they_refused(server, upstream):
    with Client(server.url) as client:
        client.send({"type": "prompt", "content": "hi", "conversation_id": "conv_nope"})
        error = client.receive()
        assert error["status"] == 404 and error["error"]["type"] == "not_found"
        assert error["conversation_id"] == "conv_nope"
        meta = client.prompt(f"{marker()} {LONG}")
        busy = {"type": "prompt", "content": "again", "conversation_id": meta["conversation_id"]}
        client.send(busy)
        error = client.until(lambda m: m["type"] == "error")[-1]
        assert error["status"] == 409 and error["error"]["type"] == "conflict"
        assert error["conversation_id"] == meta["conversation_id"]
        client.send({"type": "cancel", "generation_id": meta["generation_id"]})
        done = client.until(is_done(meta["generation_id"]))[-1]
        assert (done["status"], done["reason"]) == ("stopped", "user_stop")
        client.send({"type": "cancel", "generation_id": "gen_nope"})
        error = client.until(lambda m: m["type"] == "error")[-1]
        assert error["status"] == 404 and error["generation_id"] == "gen_nope"
        client.send({"type": "resume", "generation_id": "gen_nope"})
        error = client.receive()
        assert error["status"] == 404 and error["generation_id"] == "gen_nope"


def test_no_identity_is_refused_before_the_upgrade(server):
    with Client(server.url, headers={}) as client:
        assert client.status == 401
        assert client.error["error"]["type"] == "unauthorized"
    with Client(server.url, headers={"Authorization": "Bearer wrong"}) as client:
        assert client.status == 401


def test_a_browser_identity_must_be_same_origin_and_owns_its_answers(server, upstream):
    cookie = browser_cookie(server)
    origin = {"Origin": server.url}
    for cross in ({"Origin": "http://evil.example"}, {"Sec-Fetch-Site": "cross-site"}):
        with Client(server.url, headers={**cookie, **cross}) as client:
            assert client.status == 403, cross
    prompt = marker()
    with Client(server.url, headers={**cookie, **origin}) as browser, Client(server.url) as other:
        assert browser.status == 101
        meta = browser.prompt(f"{prompt} [demo tokens=30 gap=0.02]")
        generation_id = meta["generation_id"]
        # Someone else's answer: unknown to them, whatever they try.
        other.send({"type": "cancel", "generation_id": generation_id})
        error = other.receive()
        assert error["status"] == 404 and error["generation_id"] == generation_id
        other.send({"type": "resume", "generation_id": generation_id, "last_event_id": 0})
        assert other.receive()["status"] == 404
        assert browser.until(is_done(generation_id))[-1]["status"] == "complete"
        assert upstream.ended(prompt)["ended"] == "complete"


def test_resume_on_a_new_socket_after_a_cut_is_exact(server, upstream):
    prompt = marker()
    content = f"{prompt} [demo tokens=60 gap=0.03]"
    with Client(server.url) as client:
        meta = client.prompt(content, resume_grace_s=10)
        generation_id = meta["generation_id"]
        first = client.until(lambda m: m["type"] == "token" and m["id"] > 30)
        client.close_rst()
    time.sleep(0.3)  # it streams on with nobody watching
    assert upstream.record(prompt)["ended"] == "streaming"
    with Client(server.url) as back:
        back.send(
            {"type": "resume", "generation_id": generation_id, "last_event_id": first[-1]["id"]}
        )
        rest = back.until(is_done(generation_id))
        assert all(m["type"] != "meta" for m in rest)  # it had meta already
        assert rest[-1]["status"] == "complete"
        text = text_of(first, generation_id) + text_of(rest, generation_id)
        assert len(text.split()) == 60
        assert text == answer_row(server, generation_id)["content"]
        # Once it ended, a resume replays what was saved: from an id, or all with meta.
        back.send({"type": "resume", "generation_id": generation_id, "last_event_id": "10"})
        replay = back.until(is_done(generation_id))
        assert [m["type"] for m in replay] == ["token", "done"]
        assert replay[0]["text"] == text[10:] and replay[0]["id"] == len(text)
        back.send({"type": "resume", "generation_id": generation_id})
        replay = back.until(is_done(generation_id))
        assert [m["type"] for m in replay] == ["meta", "token", "done"]
        assert replay[1]["text"] == text


def test_without_a_grace_a_cut_stops_it_and_a_later_cancel_keeps_what_was_seen(server, upstream):
    prompt = marker()
    with Client(server.url) as client:
        generation_id = client.prompt(f"{prompt} {LONG}")["generation_id"]
        seen = client.until(lambda m: m["type"] == "token" and m["id"] > 20)
        client.close_rst()
    assert upstream.ended(prompt)["ended"] == "client_closed"
    answer_row(server, generation_id)  # saved as stopped by the disconnect
    shown = len(text_of(seen, generation_id)) - 5  # the page had painted a little less
    with Client(server.url) as back:
        back.send({"type": "cancel", "generation_id": generation_id, "seen_chars": shown})
        done = back.receive()
        assert done["type"] == "done", done
        assert (done["status"], done["reason"]) == ("stopped", "user_stop")
    row = answer_row(server, generation_id)
    assert row["content"] == text_of(seen, generation_id)[:shown]


@pytest.fixture(scope="module")
def capped(upstream):
    """A server without client keys (browser cookies only) and one running answer each."""
    process = Server(
        upstream.url,
        STOPWIRE_CLIENT_KEYS="",
        STOPWIRE_MAX_ACTIVE_PER_USER="1",
        STOPWIRE_HEARTBEAT_S="0.3",
    )
    yield process
    process.close()


def test_cookies_only_a_presented_identity_opens_a_socket_and_the_cap_holds(capped, upstream):
    # A cookie issued by the handshake itself could never be presented again: refused.
    with Client(capped.url, headers={}) as client:
        assert client.status == 401
    cookie = {**browser_cookie(capped, "/api/conversations"), "Origin": capped.url}
    prompt = marker()
    with Client(capped.url, headers=cookie) as client:
        assert client.status == 101
        meta = client.prompt(f"{prompt} {LONG}")
        client.send({"type": "prompt", "content": "a second one at once"})
        error = client.until(lambda m: m["type"] == "error")[-1]
        assert error["status"] == 429 and error["error"]["type"] == "rate_limited"
        assert error["retry_after"] == 1
        client.send({"type": "cancel", "generation_id": meta["generation_id"]})
        assert client.until(is_done(meta["generation_id"]))[-1]["reason"] == "user_stop"
        again = client.prompt(f"{marker()} [demo tokens=2]")  # the slot was given back
        assert client.until(is_done(again["generation_id"]))[-1]["status"] == "complete"


def test_sigterm_interrupts_socket_answers_then_closes_the_sockets_at_once(upstream):
    """A deploy: each answer is told `interrupted`, then its socket closes with 1012 (and
    an idle one too), long before the graceful timeout; the worker exits."""
    server = Server(upstream.url, workers=1, STOPWIRE_GRACEFUL_TIMEOUT="20")
    try:
        with Client(server.url) as busy, Client(server.url) as idle:
            prompt = marker()
            meta = busy.prompt(f"{prompt} {LONG}")
            busy.until(lambda m: m["type"] == "token")
            term_at = time.monotonic()
            server.process.send_signal(signal.SIGTERM)
            done = busy.until(is_done(meta["generation_id"]))[-1]
            assert (done["status"], done["reason"]) == ("interrupted", "shutdown")
            for client in (busy, idle):
                with pytest.raises(EOFError):
                    client.receive(timeout=10)
                assert client.close_code == 1012
            assert time.monotonic() - term_at < 5.0
            assert upstream.ended(prompt)["ended"] == "client_closed"
            server.process.wait(10)
    finally:
        server.close()


def test_each_message_counts_against_the_rate_limit_the_http_api_shares(upstream):
    """A socket is no way around the rate limit: every prompt and resume is a request,
    counted with the identity's HTTP requests (one counter, shared by workers). A cancel
    is never refused, nor counted: it ends what costs."""
    server = Server(upstream.url, STOPWIRE_RATE_LIMIT="5/minute")
    try:
        with Client(server.url) as client:  # the handshake: 1
            first = client.prompt(f"{marker()} {LONG}")  # 2
            client.send({"type": "cancel", "generation_id": first["generation_id"]})  # free
            client.until(is_done(first["generation_id"]))
            listed = requests.get(f"{server.url}/api/conversations", headers=AUTH, timeout=10)
            assert listed.status_code == 200  # 3, over HTTP
            second = client.prompt(f"{marker()} [demo tokens=2]")  # 4
            client.until(is_done(second["generation_id"]))
            third = client.prompt(f"{marker()} {LONG}")  # 5
            client.send({"type": "prompt", "content": "a sixth request"})
            error = client.until(lambda m: m["type"] == "error")[-1]
            assert error["status"] == 429 and error["error"]["type"] == "rate_limited"
            assert "5 per 1 minute" in error["error"]["message"]
            assert 1 <= error["retry_after"] <= 60
            refused = requests.get(f"{server.url}/api/conversations", headers=AUTH, timeout=10)
            assert refused.status_code == 429  # the same counter, over HTTP
            client.send({"type": "cancel", "generation_id": third["generation_id"]})
            done = client.until(is_done(third["generation_id"]))[-1]
            assert done["status"] == "stopped" and done["reason"] == "user_stop"
            assert client.status == 101 and client.close_code is None  # still open
    finally:
        server.close()

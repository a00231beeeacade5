"""The demo provider: a simulated model behind a real HTTP server (OpenAI protocol).

It runs in its own process (see `python -m flask_stopwire.demo`), so what it records is the
provider's own view: when each client connection went away and how many tokens it
had produced by then. Times are `time.monotonic()` (CLOCK_MONOTONIC), comparable
across processes of one host, so tests and benchmarks can measure stop latency.

    GET  /demo/streams    every stream's record, as JSON
    DELETE /demo/streams  forget the records
"""

import itertools
import json
import socket
import time
from collections import deque
from dataclasses import asdict, dataclass, field

import gevent
from gevent.hub import Waiter, get_hub
from gevent.server import StreamServer

from flask_stopwire.demo import script as scripts

MAX_HEAD = 64 * 1024
MAX_BODY = 4 * 1024 * 1024  # a bigger request is refused (413), never read into memory
_TCP_ESTABLISHED = 1  # TCP_INFO's state: no FIN or RST yet
RECORDS_KEPT = 1000  # the newest streams' records; older ones are forgotten
KEEPALIVE_S = 75.0
# The parts of a completion request that are not sampling options, which it records.
_NOT_OPTIONS = frozenset({"model", "messages", "stream", "stream_options"})


class ClientGone(Exception):
    """The relay closed its connection (FIN or RST)."""


@dataclass
class StreamRecord:
    """The provider's own account of one streamed answer."""

    id: int
    prompt: str
    started_at: float
    messages: list[dict] = field(default_factory=list)  # the conversation as received
    options: dict = field(default_factory=dict)  # the rest of the body: temperature, stop...
    first_token_at: float | None = None
    last_token_at: float | None = None
    tokens_sent: int = 0
    token_times: list[float] = field(default_factory=list)
    client_closed_at: float | None = None
    ended: str = "streaming"
    ended_at: float | None = None


class Request:
    """A parsed HTTP request."""

    def __init__(self, method: str, path: str, headers: dict[str, str], body: bytes):
        self.method, self.path, self.headers, self.body = method, path, headers, body


class DemoServer:
    """Serves chat completions at a scripted pace and records each client's departure."""

    def __init__(self, defaults: scripts.Script, record_text: bool = False):
        self.defaults = defaults
        # Prompts and conversations are kept only when a test asks: this process must
        # never become the way to read other people's messages.
        self.record_text = record_text
        self.records: deque[StreamRecord] = deque(maxlen=RECORDS_KEPT)
        self._ids = itertools.count(1)

    def handle(self, sock: socket.socket, _address) -> None:
        """Serve requests on one connection until it closes (keep-alive)."""
        reader = sock.makefile("rb")
        try:
            while (request := _read_request(reader)) is not None:
                if not self._route(sock, request):
                    break
        except (ClientGone, OSError, ValueError):
            pass
        finally:
            reader.close()
            sock.close()

    def _route(self, sock: socket.socket, request: Request) -> bool:
        """Answer one request; False when the connection must close."""
        path = request.path.split("?")[0]
        if request.method == "POST" and path == "/v1/chat/completions":
            return self._completion(sock, request)
        if path == "/v1/models" and request.method == "GET":
            _send_json(sock, 200, {"object": "list", "data": [_model()]})
        elif path == "/demo/streams" and request.method == "GET":
            _send_json(sock, 200, {"streams": [asdict(r) for r in self.records]})
        elif path == "/demo/streams" and request.method == "DELETE":
            self.records.clear()
            _send_json(sock, 200, {"streams": []})
        else:
            _send_json(sock, 404, _error("not_found", f"no route {request.method} {path}"))
        return True

    def _completion(self, sock: socket.socket, request: Request) -> bool:
        try:
            body = json.loads(request.body or b"{}")
            messages = body["messages"]
            user_text = next(m["content"] for m in reversed(messages) if m["role"] == "user")
        except (ValueError, KeyError, TypeError, StopIteration):
            _send_json(sock, 400, _error("invalid_request_error", "messages with a user turn"))
            return True
        script, text = scripts.parse(str(user_text), self.defaults)
        options = {k: v for k, v in body.items() if k not in _NOT_OPTIONS}
        record = StreamRecord(next(self._ids), "", time.monotonic(), [], options)
        if self.record_text:
            record.prompt, record.messages = text[:80], messages
        self.records.append(record)
        try:
            with Answer(sock, script, record, body, _bearer(request.headers)) as answer:
                return answer.send(scripts.words(script, text))
        except ClientGone:
            record.client_closed_at = record.client_closed_at or time.monotonic()
            record.ended, record.ended_at = "client_closed", time.monotonic()
            return False


class Answer:
    """One scripted answer written to one client, watching it for departure."""

    def __init__(
        self,
        sock: socket.socket,
        script: scripts.Script,
        record: StreamRecord,
        body: dict,
        key: str = "",
    ):
        self.sock, self.script, self.record, self.key = sock, script, record, key
        # Watched while idle, one watcher for the whole answer: the provider is measured
        # on the relay's own CPUs, so every microsecond per token it spends is theirs.
        self._readable = get_hub().loop.io(sock.fileno(), 1)  # 1: readable
        # One chunk's bytes around its token, built once: the stream's id and `created`
        # stay the same for all its chunks, as OpenAI's do.
        self._token_frame = _sse(_chunk(delta={"content": ""})).split(b'""', 1)
        self.stream = bool(body.get("stream"))
        self.include_usage = bool((body.get("stream_options") or {}).get("include_usage"))
        self.prompt_tokens = sum(len(str(m.get("content", "")).split()) for m in body["messages"])

    def __enter__(self) -> "Answer":
        return self

    def __exit__(self, *_exc) -> None:
        self._readable.close()

    def send(self, tokens: list[str]) -> bool:
        """Send the whole answer; False when the connection must close afterwards."""
        script = self.script
        self._idle(script.headers_delay)
        if script.status >= 400:
            _send_json(self.sock, script.status, _status_error(script.status, self.key))
            self._end("error_status")
            return True
        if not self.stream:
            return self._send_whole(tokens)
        self.sock.sendall(_head(200, "text/event-stream", chunked=True))
        self._idle(script.ttft)
        for index, token in enumerate(tokens):
            if index == script.fail_after:
                return self._fail()
            if index == script.silence_after:
                self._idle(script.silence)
            self._emit_token(token)
            self._idle(script.gap)
        if script.fail_after >= len(tokens):
            return self._fail()
        self._chunk_write(_sse(_chunk(delta={}, finish_reason="stop")))
        if self.include_usage:
            self._chunk_write(_sse(_chunk(usage=self._usage())))
        self._chunk_write(b"data: [DONE]\n\n")
        self.sock.sendall(b"0\r\n\r\n")
        self._end("complete")
        return True

    def _send_whole(self, tokens: list[str]) -> bool:
        self._idle(self.script.ttft + self.script.gap * len(tokens))
        self.record.tokens_sent = len(tokens)
        completion = {
            "id": f"chatcmpl-demo{self.record.id}",
            "object": "chat.completion",
            "created": int(time.time()),
            "model": _model()["id"],
            "choices": [
                {
                    "index": 0,
                    "finish_reason": "stop",
                    "message": {"role": "assistant", "content": "".join(tokens)},
                }
            ],
            "usage": self._usage(),
        }
        _send_json(self.sock, 200, completion)
        self._end("complete")
        return True

    def _fail(self) -> bool:
        kind = self.script.fail
        if kind == "malformed":
            self._chunk_write(b'data: {"choices": [{"delta": \n\n')
        elif kind == "error":
            self._chunk_write(
                _sse(
                    {
                        "error": {
                            "message": "The demo model overloaded (injected)",
                            "type": "server_error",
                        }
                    }
                )
            )
        self._end(f"injected_{kind}")
        if kind != "drop":
            self.sock.sendall(b"0\r\n\r\n")
        return kind != "drop"

    def _emit_token(self, token: str) -> None:
        self._check_client()
        now = time.monotonic()
        before, after = self._token_frame
        self._chunk_write(before + json.dumps(token).encode() + after)
        self.record.tokens_sent += 1
        self.record.token_times.append(now)
        self.record.first_token_at = self.record.first_token_at or now
        self.record.last_token_at = now

    def _chunk_write(self, data: bytes) -> None:
        self.sock.sendall(b"%x\r\n%s\r\n" % (len(data), data))

    def _idle(self, seconds: float) -> None:
        """Wait, but notice at once when the client leaves."""
        deadline = time.monotonic() + seconds
        while (left := deadline - time.monotonic()) > 0:
            if not self._wait_readable(left):
                return
            self._check_client()
            gevent.sleep(min(left, 0.01))  # bytes from the client while streaming: ignore

    def _wait_readable(self, seconds: float) -> bool:
        """True if the socket became readable within `seconds`: gevent's `wait_read`
        without its Timeout object and exception, which cost more than the token."""
        hub = get_hub()
        waiter = Waiter(hub)
        timer = hub.loop.timer(seconds)
        timer.start(waiter.switch, False)
        self._readable.start(waiter.switch, True)
        try:
            return waiter.get()
        finally:
            timer.close()
            self._readable.stop()

    def _check_client(self) -> None:
        if _peer_closed(self.sock):
            self.record.client_closed_at = time.monotonic()
            raise ClientGone

    def _usage(self) -> dict:
        completion = self.record.tokens_sent
        return {
            "prompt_tokens": self.prompt_tokens,
            "completion_tokens": completion,
            "total_tokens": self.prompt_tokens + completion,
        }

    def _end(self, how: str) -> None:
        self.record.ended, self.record.ended_at = how, time.monotonic()


def serve(
    host: str, port: int, defaults: scripts.Script, record_text: bool = False
) -> StreamServer:
    """Start the demo server (bound and listening) and return it."""
    demo = DemoServer(defaults, record_text)
    server = StreamServer((host, port), demo.handle, backlog=2048)
    server.start()
    return server


def _peer_closed(sock: socket.socket) -> bool:
    """True once the peer has sent FIN or RST, or the socket is unusable.

    Never blocks on TCP. On other sockets (unix) it peeks, so call it only when
    the socket is readable.
    """
    try:
        if sock.family in (socket.AF_INET, socket.AF_INET6):
            state = sock.getsockopt(socket.IPPROTO_TCP, socket.TCP_INFO, 1)[0]
            return state != _TCP_ESTABLISHED
        return sock.recv(1, socket.MSG_PEEK) == b""
    except OSError:
        return True


def _read_request(reader) -> Request | None:
    line = reader.readline(MAX_HEAD)
    if not line:
        return None
    method, path, _version = line.decode("latin-1").split(" ", 2)
    headers: dict[str, str] = {}
    while (line := reader.readline(MAX_HEAD)) not in (b"\r\n", b"\n", b""):
        name, _, value = line.decode("latin-1").partition(":")
        headers[name.strip().lower()] = value.strip()
    length = int(headers.get("content-length", 0) or 0)
    if not 0 <= length <= MAX_BODY:
        raise ValueError(f"request body of {length} bytes")  # the connection is closed
    return Request(method, path, headers, reader.read(length))


def _head(status: int, content_type: str, chunked: bool = False, length: int = 0) -> bytes:
    framing = "Transfer-Encoding: chunked" if chunked else f"Content-Length: {length}"
    return (
        f"HTTP/1.1 {status} {_REASONS.get(status, 'Status')}\r\n"
        f"Content-Type: {content_type}\r\nCache-Control: no-cache\r\n"
        f"{framing}\r\n\r\n"
    ).encode()


def _send_json(sock: socket.socket, status: int, payload: dict) -> None:
    body = json.dumps(payload).encode()
    sock.sendall(_head(status, "application/json", length=len(body)) + body)


def _sse(payload: dict) -> bytes:
    return b"data: " + json.dumps(payload).encode() + b"\n\n"


def _chunk(
    delta: dict | None = None, finish_reason: str | None = None, usage: dict | None = None
) -> dict:
    chunk = {
        "id": "chatcmpl-demo",
        "object": "chat.completion.chunk",
        "created": int(time.time()),
        "model": _model()["id"],
        "choices": [],
    }
    if delta is not None:
        chunk["choices"] = [{"index": 0, "delta": delta, "finish_reason": finish_reason}]
    if usage is not None:
        chunk["usage"] = usage
    return chunk


def _model() -> dict:
    return {"id": "stopwire-demo", "object": "model", "owned_by": "stopwire"}


def _error(type_: str, message: str) -> dict:
    return {"error": {"message": message, "type": type_, "param": None, "code": None}}


def _status_error(status: int, key: str = "") -> dict:
    kinds = {401: "invalid_api_key", 404: "model_not_found", 429: "rate_limit_exceeded"}
    message = f"demo model injected HTTP {status}"
    if status == 401:
        # Quote the key back, as some providers do, so the relay's redaction is tested.
        message += f": incorrect API key provided: {key}" if key else ": no API key provided"
    return _error(kinds.get(status, "server_error"), message)


def _bearer(headers: dict[str, str]) -> str:
    """The key in an `Authorization: Bearer` header, or ""."""
    scheme, _, key = headers.get("authorization", "").partition(" ")
    return key.strip() if scheme.lower() == "bearer" else ""


_REASONS = {
    200: "OK",
    400: "Bad Request",
    401: "Unauthorized",
    403: "Forbidden",
    404: "Not Found",
    429: "Too Many Requests",
    500: "Internal Server Error",
    502: "Bad Gateway",
    503: "Service Unavailable",
}

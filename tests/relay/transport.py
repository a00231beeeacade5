"""A scripted provider for relay unit tests: a `requests` transport whose body the test feeds.

Like httpx's MockTransport it is mounted on a real `requests.Session`, so the relay runs its
own I/O path unchanged (`open_stream`, `iter_content`, `Response.close`). The response body
is fed from a gevent Queue: the test decides when each provider SSE chunk arrives, can keep
the provider silent or hold back the response headers, cut the stream or fail a read, and
sees when the relay shut the socket down and when it closed the body.
"""

import contextlib
import json
import socket
import time
from collections.abc import Callable, Iterator
from typing import Any

import gevent
import gevent.event
import requests
from gevent.queue import Queue
from greenlet import GreenletExit
from requests.adapters import BaseAdapter
from requests.structures import CaseInsensitiveDict

from flask_stopwire.relay.disconnect import Departures
from flask_stopwire.relay.generation import Generation

DONE = b"data: [DONE]\n\n"

# The `make_generation` fixture: (generation, its transport) from keyword arguments.
MakeGeneration = Callable[..., tuple[Generation, "ScriptedTransport"]]
_EOF = object()
_CUT = object()


def text_chunk(*texts: str) -> bytes:
    """One body chunk carrying an OpenAI stream event per text."""
    return b"".join(_event({"choices": [{"index": 0, "delta": {"content": t}}]}) for t in texts)


def usage_chunk(prompt_tokens: int, completion_tokens: int) -> bytes:
    """The usage event OpenAI sends last when asked for `include_usage`."""
    usage = {"prompt_tokens": prompt_tokens, "completion_tokens": completion_tokens}
    return _event({"choices": [], "usage": usage})


def _event(data: dict[str, Any]) -> bytes:
    return b"data: " + json.dumps(data).encode() + b"\n\n"


def wait_until(condition: Callable[[], object], timeout: float = 2.0) -> None:
    """Yield to other greenlets until `condition()` is true; fail after `timeout` seconds."""
    deadline = time.monotonic() + timeout
    while not condition():
        if time.monotonic() > deadline:
            raise AssertionError(f"not true within {timeout}s: {condition}")
        gevent.sleep(0.001)


@contextlib.contextmanager
def ready_socket(order: list[str], label: str, priority: int = 0) -> Iterator[Callable[[], None]]:
    """A socket with a byte waiting, watched at libev `priority` once the function this
    yields is called; when the loop serves it, `label` goes into `order` (once)."""
    ours, theirs = socket.socketpair()
    watcher = gevent.get_hub().loop.io(ours.fileno(), 1, priority=priority)  # 1: readable
    theirs.send(b"x")

    def start() -> None:
        watcher.start(lambda: (watcher.stop(), order.append(label)))

    try:
        yield start
    finally:
        watcher.close()
        ours.close()
        theirs.close()


def loopback_pair() -> tuple[socket.socket, socket.socket]:
    """(our end, the client's end) of a new loopback TCP connection."""
    listener = socket.create_server(("127.0.0.1", 0))
    client = socket.create_connection(listener.getsockname())
    ours, _ = listener.accept()
    listener.close()
    return ours, client


def reported(departures: Departures, count: int) -> None:
    """Block (the loop does not run) until the departures' epoll set reports `count`
    sockets: one ask then finds them all."""
    deadline = time.monotonic() + 2
    while len(departures._epoll.poll(0)) < count:
        assert time.monotonic() < deadline, f"the set never reported {count} sockets"
        time.sleep(0.001)


class FakeSocket:
    """The provider socket `Generation._hang_up` shuts down: records when, and ends a
    read blocked on it, as the kernel does."""

    def __init__(self, on_shutdown: Callable[[], None]) -> None:
        self.shutdown_at: float | None = None
        self._on_shutdown = on_shutdown

    def shutdown(self, how: int) -> None:
        """Record the FIN the provider would see."""
        if self.shutdown_at is not None:
            raise OSError("already shut down")
        self.shutdown_at = time.monotonic()
        self._on_shutdown()


class FakeConnection:
    """What `response.raw.connection` is in urllib3: here only its socket."""

    def __init__(self, on_shutdown: Callable[[], None]) -> None:
        self.sock = FakeSocket(on_shutdown)


class ScriptedBody:
    """The response's `raw`: urllib3's streaming surface, fed chunk by chunk from a Queue."""

    def __init__(self) -> None:
        self.connection = FakeConnection(self._cut)
        self.reading = False  # a read is blocked waiting for the provider
        self.read_cut = False  # a read ended because the socket was shut down
        self.closed_at: float | None = None
        self.released = False
        self._chunks: Queue = Queue()
        self._ended = False

    def put(self, item: object) -> None:
        """Queue a chunk, an exception to raise from the read, or the end of the body."""
        self._chunks.put(item)

    def stream(self, amt: int | None = None, decode_content: bool = True) -> Iterator[bytes]:
        """Chunks as the test sends them (what `iter_content` reads)."""
        while (chunk := self._next()) is not None:
            yield chunk

    def drain_conn(self) -> None:
        """Read what is left, up to the end of the body."""
        while self._next() is not None:
            pass

    def _cut(self) -> None:
        self._chunks.put(_CUT)

    def close(self) -> None:
        """Record the moment the relay closed the body."""
        if self.closed_at is None:
            self.closed_at = time.monotonic()

    def release_conn(self) -> None:
        """Record that the connection went back to the pool."""
        self.released = True

    def _next(self) -> bytes | None:
        if self._ended:
            return None
        if self.closed_at is not None:
            raise OSError("read from a closed body")
        self.reading = True
        try:
            item = self._chunks.get()
        finally:
            self.reading = False
        if item is _EOF:
            self._ended = True
            return None
        if item is _CUT:  # what a read on a shut-down socket gets: the end, too early
            self.read_cut = self._ended = True
            return None
        if isinstance(item, BaseException):
            raise item
        return item


class ScriptedTransport(BaseAdapter):
    """A transport for one provider request whose response the test scripts.

    `hold=True` keeps the response headers back until `respond()` (a slow connect);
    `error` is raised instead of answering (e.g. `requests.ConnectionError`).
    """

    def __init__(
        self,
        status: int = 200,
        *,
        hold: bool = False,
        error: Exception | None = None,
    ) -> None:
        super().__init__()
        self.status = status
        self.error = error
        self.body = ScriptedBody()
        self.requests: list[requests.PreparedRequest] = []
        self.timeout: Any = None
        self.connecting = False
        self.connect_interrupted = False
        self._answer = gevent.event.Event()
        if not hold:
            self._answer.set()

    # -- the script ----------------------------------------------------------------

    def respond(self) -> None:
        """Send the held response headers now."""
        self._answer.set()

    def chunk(self, data: bytes) -> None:
        """The provider sends these bytes."""
        self.body.put(data)

    def text(self, *texts: str) -> None:
        """The provider sends one chunk with a text event per text."""
        self.chunk(text_chunk(*texts))

    def usage(self, prompt_tokens: int, completion_tokens: int) -> None:
        """The provider reports usage."""
        self.chunk(usage_chunk(prompt_tokens, completion_tokens))

    def finish(self) -> None:
        """The provider sends `[DONE]` and ends the body."""
        self.chunk(DONE)
        self.end()

    def end(self) -> None:
        """The provider ends the body (with or without a final event)."""
        self.body.put(_EOF)

    def fail(self, exc: BaseException) -> None:
        """The next read raises `exc` (a dropped connection, a read timeout)."""
        self.body.put(exc)

    # -- what the relay did --------------------------------------------------------

    @property
    def closed_at(self) -> float | None:
        """When the relay closed the response body."""
        return self.body.closed_at

    @property
    def shutdown_at(self) -> float | None:
        """When the relay shut the provider socket down."""
        return self.body.connection.sock.shutdown_at

    def sent_json(self) -> dict[str, Any]:
        """The JSON body of the one request the relay made."""
        assert len(self.requests) == 1, self.requests
        return json.loads(self.requests[0].body)

    # -- requests' adapter interface -----------------------------------------------

    def send(
        self,
        request: requests.PreparedRequest,
        stream: bool = False,
        timeout: Any = None,
        verify: Any = True,
        cert: Any = None,
        proxies: Any = None,
    ) -> requests.Response:
        """Answer the request with the scripted response (after `respond()` when held)."""
        self.requests.append(request)
        self.timeout = timeout
        self.connecting = True
        try:
            self._answer.wait()
        except GreenletExit:
            self.connect_interrupted = True
            raise
        finally:
            self.connecting = False
        if self.error is not None:
            raise self.error
        response = requests.Response()
        response.status_code = self.status
        response.reason = "scripted"
        response.headers = CaseInsensitiveDict({"Content-Type": "text/event-stream"})
        response.raw = self.body
        response.url = request.url or ""
        response.request = request
        return response

    def close(self) -> None:
        """Nothing pooled to release."""

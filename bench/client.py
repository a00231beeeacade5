"""A raw-socket HTTP/SSE client that can leave by FIN or RST at a moment it records.

`requests` cannot say when its socket closed, nor abort with RST; this client owns
its socket, so the benchmark knows the exact `time.monotonic()` just before close.
"""

import json
import socket
import struct
import time
from collections.abc import Callable, Iterator
from urllib.parse import urlsplit

# The benchmarks' identity: servers.py configures this client key on every Stopwire.
BENCH_KEY = "bench-key"
AUTH_LINE = f"Authorization: Bearer {BENCH_KEY}\r\n"

CLOSES = ("fin", "rst")


# -- request bodies: what each system under test takes, for one prompt ---------------------


def content_body(prompt: str) -> dict:
    """Stopwire with the store on (and the baseline): a new conversation, saved."""
    return {"content": prompt}


def messages_body(prompt: str) -> dict:
    """Stopwire with the store off: the caller keeps the history, nothing is saved."""
    return {"messages": [{"role": "user", "content": prompt}]}


def openai_body(prompt: str) -> dict:
    """The demo provider read directly (no relay at all), or Stopwire's /v1 (nothing saved)."""
    return {"model": "stopwire-demo", "stream": True, "messages": messages_body(prompt)["messages"]}


def get_json(sock: socket.socket, host: str, path: str) -> dict:
    """GET `path` on a keep-alive socket and return its JSON body (Content-Length framed).

    Used to learn which gunicorn worker a connection landed on (`/api/debug/stats` -> pid)
    before the same connection carries a stream.
    """
    sock.sendall(f"GET {path} HTTP/1.1\r\nHost: {host}\r\n{AUTH_LINE}\r\n".encode())
    raw = b""
    while b"\r\n\r\n" not in raw:
        raw += _recv_some(sock)
    head, body = raw.split(b"\r\n\r\n", 1)
    length = next(
        int(line.split(b":", 1)[1])
        for line in head.split(b"\r\n")
        if line.lower().startswith(b"content-length:")
    )
    while len(body) < length:
        body += _recv_some(sock)
    return json.loads(body[:length])


def _recv_some(sock: socket.socket) -> bytes:
    data = sock.recv(65536)
    if not data:
        raise EOFError("the server closed the connection")
    return data


class Stream:
    """One POST whose chunked SSE response is read frame by frame."""

    def __init__(
        self,
        base_url: str,
        path: str,
        body: dict | None,
        timeout: float = 30.0,
        sock: socket.socket | None = None,
        last_event_id: str | None = None,
    ):
        """POST `body` to `path`, or GET it when `body` is None (an EventSource's
        request, resuming after `last_event_id` when given)."""
        parts = urlsplit(base_url)
        # An idle keep-alive socket may be passed in: it stays on the worker that owns it.
        self.sock = sock or socket.create_connection((parts.hostname, parts.port), timeout=timeout)
        if body is None:
            resume = f"Last-Event-ID: {last_event_id}\r\n" if last_event_id else ""
            head = f"GET {path} HTTP/1.1\r\nHost: {parts.netloc}\r\n{AUTH_LINE}{resume}\r\n"
            payload = b""
        else:
            payload = json.dumps(body).encode()
            head = (
                f"POST {path} HTTP/1.1\r\nHost: {parts.netloc}\r\n{AUTH_LINE}"
                f"Content-Type: application/json\r\nContent-Length: {len(payload)}\r\n\r\n"
            )
        self.sock.sendall(head.encode() + payload)
        self._raw = b""
        self._body = b""
        self._head_read = False
        self.finished = False

    def read_frames(self, count: int, wanted: Callable[[bytes], bool]) -> None:
        """Read until `count` frames for which `wanted(frame)` is true have arrived.

        The response head is read here, not on open: many streams can be opened
        first and read afterwards, even from a server that answers only once the
        provider's first token is in (the baseline).
        """
        if not self._head_read:
            self._read_head()
        seen = 0
        while seen < count:
            frame = self._next_frame()
            if frame is None:
                raise EOFError(f"the stream ended after {seen} of {count} frames")
            seen += wanted(frame)

    def frames(self) -> Iterator[bytes]:
        """Every SSE frame to the end of the response."""
        if not self._head_read:
            self._read_head()
        while (frame := self._next_frame()) is not None:
            yield frame

    def _next_frame(self) -> bytes | None:
        """The next SSE frame, from what is buffered first: received chunks wait for no one."""
        while True:
            self._dechunk()
            if b"\n\n" in self._body:
                frame, self._body = self._body.split(b"\n\n", 1)
                return frame
            if self.finished:
                return None
            self._recv()

    def read_meta(self) -> dict:
        """Read Stopwire's first frame, `event: meta`, and return its data."""
        if not self._head_read:
            self._read_head()
        frame = self._next_frame() or b""
        if b"\nevent: meta\n" not in b"\n" + frame + b"\n":
            raise RuntimeError(f"expected the meta frame first, got {frame[:200]!r}")
        return json.loads(frame.split(b"data: ", 1)[1])

    def read_to_end(self) -> None:
        """Read the whole response."""
        if not self._head_read:
            self._read_head()
        self._dechunk()  # the head's packet may have carried the whole body
        while not self.finished:
            self._recv()
            self._dechunk()

    def close(self, how: str) -> float:
        """Close by FIN (plain close) or RST (SO_LINGER 0); returns the monotonic moment.

        Linux answers close() with RST, not FIN, while received bytes sit unread, so a
        FIN close first reads whatever has arrived, as a browser would have.
        """
        if how == "fin":
            self._drain()
        else:
            self.sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
        at = time.monotonic()
        self.sock.close()
        return at

    def _read_head(self) -> None:
        while b"\r\n\r\n" not in self._raw:
            self._recv()
        head, self._raw = self._raw.split(b"\r\n\r\n", 1)
        if not head.startswith(b"HTTP/1.1 200") or b"chunked" not in head.lower():
            raise RuntimeError(f"expected a 200 chunked stream, got {head[:300]!r}")
        self._head_read = True

    def _drain(self) -> None:
        self.sock.setblocking(False)
        try:
            while self.sock.recv(65536):
                pass
        except BlockingIOError:
            pass

    def _recv(self) -> None:
        data = self.sock.recv(65536)
        if not data:
            raise EOFError("the server closed the stream")
        self._raw += data

    def _dechunk(self) -> None:
        while not self.finished and b"\r\n" in self._raw:
            size_line, rest = self._raw.split(b"\r\n", 1)
            size = int(size_line.split(b";")[0], 16)
            if len(rest) < size + 2:
                return
            self._body += rest[:size]
            self._raw = rest[size + 2 :]
            self.finished = size == 0

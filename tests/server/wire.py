"""A raw-socket HTTP/SSE client: it reads exactly what the server wrote and can leave
by FIN or RST at any moment, like a closed tab or a dropped network."""

import json
import socket
import struct
import time
from dataclasses import dataclass
from typing import Any
from urllib.parse import urlsplit

# Every test request's identity: the client key tests/server/conftest.py configures (the
# host app of test_mount.py takes the same header through its own identity hook).
TEST_KEY = "test-key"
AUTH = {"Authorization": f"Bearer {TEST_KEY}"}


@dataclass
class Event:
    """One SSE frame as received; `comment` for `: keepalive` lines."""

    event: str | None = None
    data: Any = None
    id: str | None = None
    comment: str | None = None
    retry: int | None = None


class Connection:
    """One keep-alive HTTP/1.1 connection that streams chunked SSE responses."""

    def __init__(self, base_url: str, timeout: float = 15.0, headers: dict[str, str] | None = None):
        parts = urlsplit(base_url)
        self.identity = AUTH if headers is None else headers  # sent with every request
        self.host = f"{parts.hostname}:{parts.port}"
        self.sock = socket.create_connection((parts.hostname, parts.port), timeout=timeout)
        self._raw = b""
        self._body = b""
        self.finished = True
        self.status = 0
        self.headers: dict[str, str] = {}

    def post(self, path: str, body: Any, content_type: str = "application/json") -> None:
        """Send a POST and read the response head; the body is read by `next_event`."""
        self.sock.sendall(request_bytes(self.host, path, body, content_type, self.identity))
        self.read_head()

    def get(self, path: str, headers: dict[str, str] | None = None) -> None:
        """Send a GET and read the response head; a streamed body is read by `next_event`."""
        extra = {**self.identity, **(headers or {})}
        head = f"GET {path} HTTP/1.1\r\nHost: {self.host}\r\n{_lines(extra)}\r\n"
        self.sock.sendall(head.encode())
        self.read_head()

    def get_json(self, path: str) -> Any:
        """GET `path` on this connection (it stays on its worker) and return the JSON."""
        head = f"GET {path} HTTP/1.1\r\nHost: {self.host}\r\n{_lines(self.identity)}\r\n"
        self.sock.sendall(head.encode())
        self.read_head()
        return self.json()

    def read_head(self) -> None:
        while b"\r\n\r\n" not in self._raw:
            self._recv()
        head, self._raw = self._raw.split(b"\r\n\r\n", 1)
        lines = head.decode("latin-1").split("\r\n")
        self.status = int(lines[0].split()[1])
        self.headers = {
            k.strip().lower(): v.strip() for k, v in (line.split(":", 1) for line in lines[1:])
        }
        self._body, self.finished = b"", False
        if self.headers.get("transfer-encoding") != "chunked":
            length = int(self.headers.get("content-length", 0))
            while len(self._raw) < length:
                self._recv()
            self._body, self._raw = self._raw[:length], self._raw[length:]
            self.finished = True

    def json(self) -> Any:
        """The body of a non-streamed response."""
        return json.loads(self._body)

    def next_event(self) -> Event | None:
        """The next SSE frame, or None at the end of the response."""
        self._dechunk()  # the head's packet may have carried the first chunks
        while b"\n\n" not in self._body:
            if self.finished:
                return None
            self._recv()
            self._dechunk()
        frame, self._body = self._body.split(b"\n\n", 1)
        return parse_frame(frame.decode())

    def events(self, until: str | None = None, tokens: int | None = None) -> list[Event]:
        """Frames until the end, an event named `until`, or `tokens` token frames."""
        seen: list[Event] = []
        while (event := self.next_event()) is not None:
            seen.append(event)
            if until is not None and event.event == until:
                break
            if tokens is not None and sum(e.event == "token" for e in seen) >= tokens:
                break
        return seen

    def close_fin(self) -> float:
        """Close normally (FIN); returns the monotonic time of the close.

        Linux answers a close with unread received bytes by RST, so read what has
        arrived first, as a browser would.
        """
        self.sock.setblocking(False)
        try:
            while self.sock.recv(65536):
                pass
        except BlockingIOError:
            pass
        at = time.monotonic()
        self.sock.close()
        return at

    def close_rst(self) -> float:
        """Abort the connection (RST), like a crashed client; returns when."""
        self.sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
        at = time.monotonic()
        self.sock.close()
        return at

    def _recv(self) -> None:
        data = self.sock.recv(65536)
        if not data:
            raise EOFError("the server closed the connection")
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


def request_bytes(
    host: str, path: str, body: Any, content_type: str, headers: dict[str, str] | None = None
) -> bytes:
    payload = body if isinstance(body, bytes) else json.dumps(body).encode()
    return (
        f"POST {path} HTTP/1.1\r\nHost: {host}\r\nContent-Type: {content_type}\r\n"
        f"Content-Length: {len(payload)}\r\n{_lines(AUTH if headers is None else headers)}\r\n"
    ).encode() + payload


def _lines(headers: dict[str, str]) -> str:
    return "".join(f"{name}: {value}\r\n" for name, value in headers.items())


def parse_frame(frame: str) -> Event:
    event = Event()
    data_lines = []
    for line in frame.split("\n"):
        if line.startswith(":"):
            event.comment = line[1:].strip()
        else:
            name, _, value = line.partition(": ")
            if name == "data":
                data_lines.append(value)
            elif name == "event":
                event.event = value
            elif name == "id":
                event.id = value
            elif name == "retry":
                event.retry = int(value)
    if data_lines:
        event.data = json.loads("\n".join(data_lines))
    return event


def open_stream(
    base_url: str, content: str, path: str = "/api/chat", headers: dict[str, str] | None = None
) -> Connection:
    """POST a chat (as the test key, or as `headers` say) and read up to its `meta` event."""
    conn = Connection(base_url, headers=headers)
    conn.post(path, {"content": content})
    assert conn.status == 200, (conn.status, conn._raw[:300])
    meta = conn.next_event()
    assert meta is not None and meta.event == "meta", meta
    conn.meta = meta.data
    return conn


def pinned(base_url: str, headers: dict[str, str] | None = None) -> tuple[int, Connection]:
    """A new keep-alive connection and the pid of the worker that holds it."""
    conn = Connection(base_url, headers=headers)
    return conn.get_json("/api/debug/stats")["pid"], conn


def connection_to(
    base_url: str, want, tries: int = 300, headers: dict[str, str] | None = None
) -> Connection:
    """A keep-alive connection held by a worker whose pid satisfies `want`.

    Which worker accepts is up to the kernel: idle gevent workers wake in LIFO order and
    accept in batches, so the same one tends to win until it is busy. Keep trying.
    """
    for _ in range(tries):
        pid, conn = pinned(base_url, headers)
        if want(pid):
            return conn
        conn.sock.close()
        time.sleep(0.01)
    raise AssertionError("no connection reached the wanted worker")

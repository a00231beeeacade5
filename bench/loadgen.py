"""Many SSE streams read at once by one thread, with the moment each byte arrived.

A thread per stream would put the benchmark's own GIL queue into every latency it
measures. Here one `selectors` loop only receives and timestamps; parsing happens
after the run, so the client adds as little as it can to the numbers.

Every demo token is one word, so the k-th word a client receives is the provider's
k-th token, whichever relay frame (coalesced or not) carried it.
"""

import json
import selectors
import socket
import time
from dataclasses import dataclass, field
from urllib.parse import urlsplit

from bench.client import AUTH_LINE

END = b"\r\n0\r\n\r\n"  # the last chunk of a chunked body


@dataclass
class Received:
    """One stream as its client saw it: when it asked, and when each token arrived."""

    marker: str
    sent_at: float
    token_at: list[float] = field(default_factory=list)
    texts: list[str] = field(default_factory=list)  # every frame's text, in order
    generation_id: str | None = None
    complete: bool = False


class _Conn:
    """A socket and the (time, bytes) pieces it received."""

    def __init__(self, sock: socket.socket, marker: str, sent_at: float):
        self.sock, self.marker, self.sent_at = sock, marker, sent_at
        self.pieces: list[tuple[float, bytes]] = []
        self.tail = b""
        self.done = False


def request_bytes(host: str, path: str, body: dict) -> bytes:
    """An HTTP/1.1 POST of `body` as JSON."""
    payload = json.dumps(body).encode()
    head = (
        f"POST {path} HTTP/1.1\r\nHost: {host}\r\n{AUTH_LINE}"
        f"Content-Type: application/json\r\nContent-Length: {len(payload)}\r\n\r\n"
    )
    return head.encode() + payload


def run(
    base_url: str, path: str, bodies: dict[str, dict], timeout: float, stagger_s: float = 0.0
) -> list[Received]:
    """POST every body (keyed by marker), read all responses to their end, parse them."""
    parts = urlsplit(base_url)
    selector = selectors.DefaultSelector()
    conns = []
    try:
        for marker, body in bodies.items():
            sock = socket.create_connection((parts.hostname, parts.port), timeout=10)
            sent_at = time.monotonic()
            sock.sendall(request_bytes(parts.netloc, path, body))
            sock.setblocking(False)
            conn = _Conn(sock, marker, sent_at)
            conns.append(conn)
            selector.register(sock, selectors.EVENT_READ, conn)
            if stagger_s:
                _pump(selector, stagger_s)
        deadline = time.monotonic() + timeout
        while any(not c.done for c in conns):
            if time.monotonic() > deadline:
                missing = sum(not c.done for c in conns)
                raise TimeoutError(f"{missing} of {len(conns)} streams did not end in {timeout}s")
            _pump(selector, 0.5)
    finally:
        selector.close()
        for conn in conns:
            conn.sock.close()
    return [parse(c.marker, c.sent_at, c.pieces) for c in conns]


def _pump(selector: selectors.BaseSelector, wait_s: float) -> None:
    """Receive whatever is ready within `wait_s`; stamp it at once."""
    for key, _ in selector.select(wait_s):
        conn: _Conn = key.data
        try:
            data = conn.sock.recv(65536)
        except BlockingIOError:
            continue
        now = time.monotonic()
        if not data:
            conn.done = True
            selector.unregister(conn.sock)
            continue
        conn.pieces.append((now, data))
        conn.tail = (conn.tail + data)[-len(END) :]
        if conn.tail == END:
            conn.done = True
            selector.unregister(conn.sock)


def parse(marker: str, sent_at: float, pieces: list[tuple[float, bytes]]) -> Received:
    """Token arrival times from the timestamped bytes of one chunked SSE response."""
    received = Received(marker, sent_at)
    raw = body = b""
    head_done = False
    for at, data in pieces:
        raw += data
        if not head_done:
            if b"\r\n\r\n" not in raw:
                continue
            head, raw = raw.split(b"\r\n\r\n", 1)
            if not head.startswith(b"HTTP/1.1 200"):
                raise RuntimeError(f"{marker}: expected 200, got {head[:200]!r}")
            head_done = True
        chunk, raw, ended = dechunk(raw)
        body += chunk
        received.complete |= ended
        while b"\n\n" in body:
            frame, body = body.split(b"\n\n", 1)
            _frame(received, frame, at)
    return received


def dechunk(raw: bytes) -> tuple[bytes, bytes, bool]:
    """Complete chunks' payload, the unparsed rest, and whether the last chunk came."""
    out = b""
    while b"\r\n" in raw:
        size_line, rest = raw.split(b"\r\n", 1)
        size = int(size_line.split(b";")[0], 16)
        if len(rest) < size + 2:
            break
        if size == 0:
            return out, b"", True
        out += rest[:size]
        raw = rest[size + 2 :]
    return out, raw, False


def _frame(received: Received, frame: bytes, at: float) -> None:
    """Credit the words of one frame to the moment it arrived."""
    data = next((line[6:] for line in frame.split(b"\n") if line.startswith(b"data: ")), None)
    if data is None or not data.startswith(b"{"):
        return
    payload = json.loads(data)
    if b"event: meta" in frame:
        received.generation_id = payload.get("generation_id")
        return
    if b"event: token" in frame:
        text = payload.get("text", "")
    elif b"event:" in frame:
        return
    else:
        choices = payload.get("choices") or [{}]
        text = (choices[0].get("delta") or {}).get("content") or ""
    received.texts.append(text)
    received.token_at.extend([at] * len(text.split()))

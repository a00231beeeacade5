"""Pooled provider connections: a dropped one is not reused, and asking never yields."""

import http.server
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from flask_stopwire.providers import pool
from flask_stopwire.providers.base import ProviderCall
from flask_stopwire.providers.http import new_session, open_stream

ROOT = Path(__file__).resolve().parents[2]


def test_a_socket_is_readable_now_once_its_peer_wrote_or_left() -> None:
    ours, theirs = socket.socketpair()
    with ours, theirs:
        assert not pool.readable_now(ours)
        theirs.sendall(b"x")
        assert pool.readable_now(ours)
        ours.recv(1)
        assert not pool.readable_now(ours)
        theirs.close()
        assert pool.readable_now(ours)  # the end of the connection


class _ClosesWhenIdle(http.server.BaseHTTPRequestHandler):
    """A provider that keeps no connection alive, and does not say so (no `Connection:
    close`): the client pools each connection, and finds it closed when it comes back."""

    protocol_version = "HTTP/1.1"
    peers: list[tuple[str, int]] = []  # noqa: RUF012 - one server per test, reset there

    def do_POST(self) -> None:
        self.rfile.read(int(self.headers["Content-Length"]))
        self.peers.append(self.client_address)
        body = b"data: [DONE]\n\n"
        self.send_response(200)
        self.send_header("Content-Type", "text/event-stream")
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)
        self.close_connection = True

    def log_message(self, *_: object) -> None:
        pass


class _Server(http.server.ThreadingHTTPServer):
    """Says when it has closed a connection (its FIN is then on the way to the client)."""

    closed: threading.Semaphore

    def shutdown_request(self, request: socket.socket) -> None:
        super().shutdown_request(request)
        self.closed.release()


@pytest.fixture
def closing_provider() -> Iterator[_Server]:
    server = _Server(("127.0.0.1", 0), _ClosesWhenIdle)
    server.closed = threading.Semaphore(0)
    _ClosesWhenIdle.peers = []
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield server
    finally:
        server.shutdown()
        server.server_close()


def test_a_pooled_connection_the_provider_closed_is_not_reused(closing_provider: _Server) -> None:
    url = f"http://127.0.0.1:{closing_provider.server_address[1]}"
    session = new_session(4, url)
    call = ProviderCall(f"{url}/chat/completions", {"model": "m"}, {})
    for _ in range(3):
        response = open_stream(session, call, (5, 5))
        assert isinstance(response.raw.connection, pool._Checked)  # the session's pools'
        assert response.content == b"data: [DONE]\n\n"  # read whole: back to the pool
        response.close()
        assert closing_provider.closed.acquire(timeout=5)
        time.sleep(0.05)  # its FIN crosses loopback in microseconds
    assert len(set(_ClosesWhenIdle.peers)) == 3  # a new connection each time


_YIELDS = """
from gevent import monkey; monkey.patch_all()
import gevent, socket
from urllib3.connection import HTTPConnection
from flask_stopwire.providers.pool import _Connection

ours, theirs = socket.socketpair()
for cls in (HTTPConnection, _Connection):
    conn = cls("127.0.0.1")
    conn.sock = ours
    others = []
    gevent.spawn(others.append, "ran")
    connected = conn.is_connected
    print(cls.__name__, connected, bool(others))
    gevent.sleep(0)
"""


def test_asking_whether_a_pooled_connection_is_alive_never_yields_to_other_greenlets() -> None:
    """Under gevent's monkey-patching (the gunicorn worker's), urllib3's own check lets
    every other greenlet run first; ours answers at once."""
    result = subprocess.run(
        [sys.executable, "-c", _YIELDS], cwd=ROOT, capture_output=True, text=True, timeout=60
    )
    assert result.returncode == 0, result.stderr
    assert result.stdout.split("\n")[:2] == ["HTTPConnection True True", "_Connection True False"]

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
import requests
import urllib3

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
        sock = response.raw.connection.sock
        assert response.content == b"data: [DONE]\n\n"  # read whole: back to the pool
        response.close()
        assert closing_provider.closed.acquire(timeout=5)
        _until(lambda sock=sock: pool.readable_now(sock))  # its FIN is here: reuse would fail
    assert len(set(_ClosesWhenIdle.peers)) == 3  # a new connection each time


def _until(condition, timeout_s: float = 5.0) -> None:
    deadline = time.monotonic() + timeout_s
    while not condition():
        assert time.monotonic() < deadline, "the server's FIN never arrived"
        time.sleep(0.005)


@pytest.mark.parametrize("scheme", ["http", "https"])
def test_the_sessions_pools_and_an_http_proxys_hand_out_checked_connections(scheme: str) -> None:
    session = new_session(4, f"{scheme}://provider.example.com/v1")
    adapter = session.get_adapter(f"{scheme}://provider.example.com/v1")
    managers = [adapter.poolmanager, adapter.proxy_manager_for("http://proxy.internal:3128")]
    for manager in managers:
        connections = manager.connection_from_url(f"{scheme}://provider.example.com/").ConnectionCls
        assert issubclass(connections, pool._Checked), manager


def test_a_socks_proxy_keeps_its_own_pools(monkeypatch: pytest.MonkeyPatch) -> None:
    """urllib3's SOCKS pools carry the proxy's options: ours would drop them (PySocks is
    not installed here, so a stand-in manager with pools of its own takes its place)."""

    class SocksManager(urllib3.PoolManager):
        def __init__(self, proxy_url: str, **kwargs: object) -> None:
            kwargs = {k: v for k, v in kwargs.items() if k not in ("username", "password")}
            super().__init__(**kwargs)
            self.pool_classes_by_scheme = {"http": SocksPool, "https": SocksPool}

    class SocksPool(urllib3.HTTPConnectionPool):
        pass

    monkeypatch.setattr(requests.adapters, "SOCKSProxyManager", SocksManager)
    adapter = new_session(4, "http://provider.example.com/v1").get_adapter("http://x")
    manager = adapter.proxy_manager_for("socks5://proxy.internal:1080")
    assert manager.pool_classes_by_scheme == {"http": SocksPool, "https": SocksPool}


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
    theirs, ours = result.stdout.split("\n")[:2]
    assert ours == "_Connection True False"
    # The premise: if gevent's poll ever stops yielding, providers/pool.py is not needed.
    assert theirs == "HTTPConnection True True", "gevent's zero-timeout poll no longer yields"

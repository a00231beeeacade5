"""A loopback TCP proxy that can cut every connection through it at once, with RST.

One thread runs a `selectors` loop (no gevent, no asyncio): every socket is read only
when it is readable, so a cut is a plain close with SO_LINGER 0 from that same thread,
and the peer sees a reset at once (a close from another thread would wait for the
blocked `recv`). Between cuts it can refuse what comes next: every new connection, or
only the requests whose first line contains some bytes (a reconnect's path, say).
"""

import contextlib
import queue
import selectors
import socket
import struct
import threading
from collections.abc import Callable

_LINGER_RST = struct.pack("ii", 1, 0)  # on, 0 s: close() sends RST, not FIN


def reset(sock: socket.socket) -> None:
    """Close `sock` so that its peer gets a RST."""
    with contextlib.suppress(OSError):  # already reset by its peer
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, _LINGER_RST)
    sock.close()


class Cutter:
    """`127.0.0.1:<port>` forwarding to `127.0.0.1:<target_port>`; `url` is its address."""

    def __init__(self, target_port: int):
        self.target = ("127.0.0.1", target_port)
        self.listener = socket.create_server(("127.0.0.1", 0))
        self.listener.setblocking(False)
        self.port = self.listener.getsockname()[1]
        self.url = f"http://127.0.0.1:{self.port}"
        self.refused = 0  # connections or requests turned away with a RST so far
        self._refuse: bytes | None = None  # b"": every new connection; else a request match
        self._peers: dict[socket.socket, socket.socket] = {}
        self._clients: set[socket.socket] = set()  # the browser's ends of the connections
        self._selector = selectors.DefaultSelector()
        self._selector.register(self.listener, selectors.EVENT_READ)
        self._wake_r, self._wake_w = socket.socketpair()
        self._selector.register(self._wake_r, selectors.EVENT_READ)
        self._calls: queue.Queue = queue.Queue()
        self._running = True
        self._thread = threading.Thread(target=self._loop, name="cutter", daemon=True)
        self._thread.start()

    # -- the test's side: each call runs in the loop's thread, and returns its answer ----

    def cut(self) -> int:
        """Reset every connection through the proxy now (both ends); how many there were."""
        return self._call(self._cut_all)

    def refuse(self, request_contains: bytes = b"") -> None:
        """From now on reset every new connection, or with `request_contains` every
        request whose first line contains it (on any connection), until `admit()`."""
        self._call(lambda: setattr(self, "_refuse", request_contains))

    def admit(self) -> None:
        """Let everything through again."""
        self._call(lambda: setattr(self, "_refuse", None))

    def close(self) -> None:
        if self._running:
            self._call(self._stop)
            self._thread.join(5)

    def _call(self, function: Callable):
        done: queue.Queue = queue.Queue()
        self._calls.put((function, done))
        self._wake_w.send(b"x")
        ok, value = done.get(timeout=5)
        if not ok:
            raise value
        return value

    # -- the loop ------------------------------------------------------------------------

    def _loop(self) -> None:
        while self._running:
            for key, _ in self._selector.select(timeout=1.0):
                sock = key.fileobj
                if sock is self.listener:
                    self._accept()
                elif sock is self._wake_r:
                    self._run_calls()
                elif sock in self._peers:
                    self._forward(sock)
        for sock in list(self._peers):
            sock.close()
        self._selector.close()
        self.listener.close()
        self._wake_r.close()
        self._wake_w.close()

    def _run_calls(self) -> None:
        self._wake_r.recv(4096)
        while True:
            try:
                function, done = self._calls.get_nowait()
            except queue.Empty:
                return
            try:
                done.put((True, function()))
            except Exception as exc:
                done.put((False, exc))

    def _accept(self) -> None:
        try:
            client, _ = self.listener.accept()
        except BlockingIOError:
            return
        if self._refuse == b"":
            self.refused += 1
            reset(client)
            return
        try:
            upstream = socket.create_connection(self.target, timeout=2)
        except OSError:
            reset(client)
            return
        for sock in (client, upstream):
            sock.settimeout(5)  # sends may wait a little for a slow reader; reads never do
            sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
            self._selector.register(sock, selectors.EVENT_READ)
        self._peers[client] = upstream
        self._peers[upstream] = client
        self._clients.add(client)

    def _forward(self, sock: socket.socket) -> None:
        peer = self._peers[sock]
        try:
            data = sock.recv(65536)
        except OSError:
            self._drop(sock, rst=True)
            return
        if not data:
            self._drop(sock, rst=False)
            return
        if self._refused_request(sock, data):
            self.refused += 1
            self._drop(sock, rst=True)
            return
        try:
            peer.sendall(data)
        except OSError:
            self._drop(sock, rst=True)

    def _refused_request(self, sock: socket.socket, data: bytes) -> bool:
        if not self._refuse or sock not in self._clients:
            return False
        return self._refuse in data.split(b"\r\n", 1)[0]

    def _drop(self, sock: socket.socket, rst: bool) -> None:
        """Close a connection's both ends: with RST for a cut, else as the other end did."""
        peer = self._peers.pop(sock)
        self._peers.pop(peer, None)
        self._clients.difference_update((sock, peer))
        for end in (sock, peer):
            self._selector.unregister(end)
            if rst:
                reset(end)
            else:
                end.close()

    def _cut_all(self) -> int:
        clients = list(self._clients)
        for client in clients:
            self._drop(client, rst=True)
        return len(clients)

    def _stop(self) -> None:
        self._running = False

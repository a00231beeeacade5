"""Noticing that an HTTP client went away while we stream to it.

gunicorn does not read the client socket while a response streams, so on its own
a closed tab is noticed only when a write fails: one or two tokens late, and not
at all while the provider is silent. `Watch` waits for the socket to become
readable and then asks the kernel for the TCP state: CLOSE_WAIT after the
client's FIN, CLOSE after its RST. Unread pipelined bytes also make the socket
readable but leave it ESTABLISHED and hide the FIN from a peek: then we poll the
state. TCP_INFO works under TLS too, where a peek would see ciphertext.

It is two watchers of the event loop, not a greenlet: one per open stream, and a
greenlet's saved stack is most of what a stream costs in memory.
"""

import socket
from collections.abc import Callable
from typing import Any

from gevent.hub import get_hub

_TCP_ESTABLISHED = 1
_POLL_S = 0.05
_FIRST = 1  # a libev priority above the default (0) of the provider sockets' watchers


def peer_closed(sock: socket.socket) -> bool:
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


def give_up_after(sock: socket.socket, seconds: float) -> None:
    """Have the kernel drop the connection once data it sent goes unacknowledged this long.

    A client whose network vanished sends neither FIN nor RST: without this the kernel
    retransmits our heartbeats for about 15 minutes before it gives up. With it, the
    socket fails after `seconds`, and the watcher sees the TCP state leave ESTABLISHED.
    """
    if sock.family in (socket.AF_INET, socket.AF_INET6):
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_USER_TIMEOUT, max(1, int(seconds * 1000)))


def watch(client: Any, on_gone: Callable[[], object], give_up_s: float | None = None) -> Any:
    """Watch `client` for its departure; `close()` what this returns when done.

    `client` is a socket (its TCP state, `Watch`; with `give_up_s`, `give_up_after` too),
    or anything with a `watch(on_gone)` of its own: a WebSocket's handler knows when its
    socket closed before the kernel's state says so.
    """
    if hasattr(client, "watch"):
        return client.watch(on_gone)
    if give_up_s is not None:
        give_up_after(client, give_up_s)
    return Watch(client, on_gone)


class Watch:
    """Calls `on_gone` (from the event loop) once the client is gone; `close()` stops it."""

    def __init__(self, sock: socket.socket, on_gone: Callable[[], object]):
        self._sock = sock
        self._on_gone = on_gone
        self._loop = get_hub().loop
        self._timer: Any = None
        try:
            # Before the tokens of the same loop turn: a departure stops a provider.
            self._io: Any = self._loop.io(sock.fileno(), 1, priority=_FIRST)  # 1: readable
        except OSError:
            self._io = None  # the socket was closed under us: the client is gone
            self._timer = self._loop.timer(0)
            self._timer.start(self._gone)
            return
        self._io.start(self._readable)

    def close(self) -> None:
        """Stop watching (before gunicorn reads the next request on the socket)."""
        if self._io is not None:
            self._io.close()
            self._io = None
        if self._timer is not None:
            self._timer.close()
            self._timer = None

    def _readable(self) -> None:
        self._io.stop()
        if peer_closed(self._sock):
            self._gone()
        else:  # readable yet open: pipelined bytes of a next request; poll the state
            self._timer = self._loop.timer(_POLL_S, _POLL_S)
            self._timer.start(self._poll)

    def _poll(self) -> None:
        if peer_closed(self._sock):
            self._gone()

    def _gone(self) -> None:
        self.close()
        self._on_gone()

"""Noticing that an HTTP client went away while we stream to it.

gunicorn does not read the client socket while a response streams, so on its own
a closed tab is noticed only when a write fails: one or two tokens late, and not
at all while the provider is silent. `watch` waits for the socket to become
readable and then asks the kernel for the TCP state: CLOSE_WAIT after the
client's FIN, CLOSE after its RST. Unread pipelined bytes also make the socket
readable but leave it ESTABLISHED and hide the FIN from a peek: then we poll the
state. TCP_INFO works under TLS too, where a peek would see ciphertext.
"""

import socket
from collections.abc import Callable

import gevent
from gevent.socket import wait_read

_TCP_ESTABLISHED = 1
_POLL_S = 0.05


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


def watch(sock: socket.socket, on_gone: Callable[[], object]) -> None:
    """Call `on_gone` once the client is gone. Run it in a greenlet; kill it to stop watching."""
    try:
        wait_read(sock.fileno())
        while not peer_closed(sock):
            gevent.sleep(_POLL_S)  # readable yet open: pipelined bytes of a next request
    except OSError:
        pass  # the socket was closed under us: the client is gone all the same
    on_gone()

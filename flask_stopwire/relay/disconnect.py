"""Noticing that an HTTP client went away while we stream to it.

gunicorn does not read the client socket while a response streams, so on its own
a closed tab is noticed only when a write fails: one or two tokens late, and not
at all while the provider is silent. `Watch` waits for epoll to report the socket:
with the readiness it says whether the client sent its FIN (EPOLLRDHUP) or its RST
(EPOLLHUP, EPOLLERR), from the TCP layer, so it works under TLS too, where a peek
would see ciphertext. Unread pipelined bytes alone make the socket readable while
the client stays: then we poll the kernel's TCP state until it leaves ESTABLISHED.

Every watched socket of a worker sits in one epoll set of its own (`Departures`), not a
greenlet each: a greenlet's saved stack is most of what a stream costs in memory. The
event loop watches that set before the provider sockets of the same loop turn; and the
work of a long turn (a burst of tokens, of starts, of ends) asks it again every
millisecond (`Departures.ask_if_due`), so a client that leaves then is not kept waiting for
the next poll, nor its provider for our FIN: with many clients leaving at once, each
departure seen would otherwise hold the next ones up by a whole turn of work. When
many leave at once, every departure asked about is served (its provider hears our FIN)
before any socket is taken out of the set (each removal is a syscall the next
provider's FIN need not wait behind), and before what a handler leaves for after
(`Departures.after_serving`).
"""

import contextlib
import select
import socket
import time
import weakref
from collections.abc import Callable
from typing import Any

from gevent.hub import Hub, get_hub
from gevent.monkey import get_original

_TCP_ESTABLISHED = 1
_POLL_S = 0.05
_FIRST = 1  # a libev priority above the default (0) of the provider sockets' watchers
_MID_TURN_S = 0.001  # how often a long loop turn asks for departures
_WATCHED = select.EPOLLIN | select.EPOLLRDHUP
_GONE = select.EPOLLRDHUP | select.EPOLLHUP | select.EPOLLERR  # its FIN, its RST, a failure
# The worker patches `select`, taking epoll away; ours never blocks (it polls with timeout 0).
_epoll = get_original("select", "epoll")


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
        self._departures = departures()
        self._timer: Any = None
        try:
            self.fd = sock.fileno()
            self._departures.add(self)
        except (OSError, ValueError):  # epoll refuses the -1 of a closed socket: ValueError
            self.fd = -1  # the socket was closed under us: the client is gone
            self._timer = self._departures.loop.timer(0)
            self._timer.start(self.gone)

    def close(self) -> None:
        """Stop watching (before gunicorn reads the next request on the socket)."""
        self._departures.remove(self)
        if self._timer is not None:
            self._timer.close()
            self._timer = None

    def readable(self) -> None:
        """From the loop: the client sent bytes, and epoll saw no FIN or RST with them."""
        self._departures.remove(self)
        if peer_closed(self._sock):  # it left since
            self.gone()
        else:  # pipelined bytes of a next request: poll the state
            self._timer = self._departures.loop.timer(_POLL_S, _POLL_S)
            self._timer.start(self._poll)

    def gone(self) -> None:
        """The client left: stop watching, tell `on_gone`."""
        self.close()
        self._on_gone()

    def _poll(self) -> None:
        if peer_closed(self._sock):
            self.gone()


class Departures:
    """The watched client sockets of one event loop, in an epoll set of its own."""

    def __init__(self, hub: Hub):  # holds no reference to `hub`
        self.loop = hub.loop
        self._epoll = _epoll()
        self._watches: dict[int, Watch] = {}
        self._asked_at = 0.0
        self.serving = False  # in `ask`, serving the departures it found
        # Set while serving: what a departure's handler leaves until every one was served.
        self.after_serving: Callable[[], object] | None = None
        # Before the tokens of the same loop turn: a departure stops a provider.
        self._io = self.loop.io(self._epoll.fileno(), 1, priority=_FIRST)  # 1: readable
        self._io.start(self.ask)

    def add(self, watch: Watch) -> None:
        try:
            self._epoll.register(watch.fd, _WATCHED)
        except FileExistsError:
            self._epoll.modify(watch.fd, _WATCHED)
        # An fd already here is a reused one (a socket closed before its watch was): ours now.
        self._watches[watch.fd] = watch

    def remove(self, watch: Watch) -> None:
        if self._watches.get(watch.fd) is not watch:
            return  # not watched, or its fd now belongs to another watch
        del self._watches[watch.fd]
        self._unregister(watch.fd)

    def ask(self) -> None:
        """Serve every departure the kernel has for us now (from the loop)."""
        self._asked_at = time.perf_counter()
        reported = self._epoll.poll(0)
        if reported:  # mostly not: the reader asks before each token it reads
            self._serve(reported)

    def _serve(self, reported: list[tuple[int, int]]) -> None:
        """All the departures first, then their sockets out of the set."""
        left: list[int] = []
        self.serving = True
        try:
            for fd, events in reported:
                watch = self._watches.get(fd)
                if watch is None:
                    continue
                if events & _GONE:
                    del self._watches[fd]  # its `close()` leaves the set to us
                    left.append(fd)
                    watch.gone()
                else:
                    watch.readable()
        finally:
            self.serving = False
            for fd in left:
                self._unregister(fd)
            then, self.after_serving = self.after_serving, None
            if then is not None:
                then()

    def _unregister(self, fd: int) -> None:
        if fd in self._watches:
            return  # its socket closed meanwhile, and a new watch has the fd now
        # A socket closed first was taken out of the set with it.
        with contextlib.suppress(OSError):
            self._epoll.unregister(fd)

    def ask_if_due(self) -> None:
        """`ask()`, unless someone did less than a millisecond ago: for the loop's own
        work (the hub's greenlet) in the middle of a long turn."""
        if time.perf_counter() - self._asked_at >= _MID_TURN_S:
            self.ask()


_departures: "weakref.WeakKeyDictionary[Hub, Departures]" = weakref.WeakKeyDictionary()


def departures() -> Departures:
    """This thread's event loop's departures."""
    hub = get_hub()
    found = _departures.get(hub)
    if found is None:
        found = _departures[hub] = Departures(hub)
    return found


def notice_departures() -> None:
    """`Departures.ask_if_due` for this thread's loop, if it watches anyone yet (it
    creates nothing): for work that holds no `Departures` of its own."""
    found = _departures.get(get_hub())
    if found is not None:
        found.ask_if_due()

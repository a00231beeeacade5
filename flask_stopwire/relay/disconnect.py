"""Noticing that an HTTP client went away while we stream to it.

gunicorn does not read the client socket while a response streams, so on its own
a closed tab is noticed only when a write fails: one or two tokens late, and not
at all while the provider is silent. `Watch` has epoll report the client's end of
the socket and nothing else: its FIN (EPOLLRDHUP), its RST or a socket the kernel
gave up on (EPOLLHUP, EPOLLERR). That comes from the transport layer, so it works
under TLS too, where a peek would see ciphertext; and bytes the client sends while
it stays (a pipelined next request) wake nobody.

Every watched socket of a worker sits in one epoll set of its own (`Departures`), not a
greenlet each: a greenlet's saved stack is most of what a stream costs in memory. The
event loop watches that set before the provider sockets of the same loop turn; and the
work of a long turn (a burst of tokens, of starts, of ends) asks it again every
millisecond (`Departures.ask_if_due`), so a client that leaves then is not kept waiting for
the next poll, nor its provider for our FIN: with many clients leaving at once, each
departure seen would otherwise hold the next ones up by a whole turn of work. When
many leave at once, every departure asked about is served (its provider hears our FIN)
before what a handler leaves for after (`Departures.after_serving`) and before any
socket is taken out of the set: each removal is a syscall the next provider's FIN need
not wait behind.
"""

import contextlib
import logging
import select
import socket
import time
import weakref
from collections.abc import Callable
from typing import Any

from gevent.hub import Hub, get_hub
from gevent.monkey import get_original

from flask_stopwire.relay import priorities

log = logging.getLogger(__name__)

_MID_TURN_S = 0.001  # how often a long loop turn asks for departures
# Its FIN; epoll always reports EPOLLHUP and EPOLLERR besides. No EPOLLIN: bytes are no departure.
_WATCHED = select.EPOLLRDHUP
# The worker patches `select`, taking epoll away; ours never blocks (it polls with timeout 0).
_epoll = get_original("select", "epoll")


def give_up_after(sock: socket.socket, seconds: float) -> None:
    """Have the kernel drop the connection once data it sent goes unacknowledged this long.

    A client whose network vanished sends neither FIN nor RST: without this the kernel
    retransmits our heartbeats for about 15 minutes before it gives up. With it, the
    socket fails after `seconds`, and epoll reports it to the watcher.
    """
    if sock.family in (socket.AF_INET, socket.AF_INET6):
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_USER_TIMEOUT, max(1, int(seconds * 1000)))


def watch(client: Any, on_gone: Callable[[], object], give_up_s: float | None = None) -> Any:
    """Watch `client` for its departure; `close()` what this returns when done.

    `client` is a socket (epoll's report of its end, `Watch`; with `give_up_s`,
    `give_up_after` too), or anything with a `watch(on_gone)` of its own: a WebSocket's
    handler knows when its socket closed before epoll says so.
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

    def gone(self) -> None:
        """The client left: stop watching, tell `on_gone`."""
        self.close()
        self._on_gone()


class Departures:
    """The watched client sockets of one event loop, in an epoll set of its own."""

    def __init__(self, hub: Hub):  # holds no reference to `hub`
        self.loop = hub.loop
        self._epoll = _epoll()
        self._watches: dict[int, Watch] = {}
        self._asked_at = 0.0
        self.serving = False  # in `ask`, serving the departures it found
        # What a departure's handler leaves until every one was served (`after_departures`).
        self.after_serving: Callable[[], object] | None = None
        # 1: readable. Before the tokens of the same loop turn: a departure stops a provider.
        self._io = self.loop.io(self._epoll.fileno(), 1, priority=priorities.DEPARTURES)
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
        """Every departure reported, then what their handlers left for after, then their
        sockets out of the set. A handler that fails is logged: the others are served,
        and the loop goes on watching (a watcher whose callback raises is stopped)."""
        left: list[int] = []
        self.serving = True
        try:
            for fd, _ in reported:
                left.append(fd)  # watched or not (then nobody's): out of the set after
                watch = self._watches.pop(fd, None)  # its `close()` leaves the set to us
                if watch is None:
                    continue
                try:
                    watch.gone()
                except Exception:
                    log.exception("the handler of a departed client failed")
        finally:
            self.serving = False
            then, self.after_serving = self.after_serving, None
            if then is not None:
                then()
            for fd in left:
                self._unregister(fd)

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


def after_departures(then: Callable[[], object]) -> bool:
    """Have `then` run once every departure this thread's loop is serving now was served
    (in place of what an earlier handler of the batch asked for: the same); False, and
    nothing done, when it serves none."""
    found = _departures.get(get_hub())
    if found is None or not found.serving:
        return False
    found.after_serving = then
    return True


def notice_departures() -> None:
    """`Departures.ask_if_due` for this thread's loop, if it watches anyone yet (it
    creates nothing): for work that holds no `Departures` of its own."""
    found = _departures.get(get_hub())
    if found is not None:
        found.ask_if_due()

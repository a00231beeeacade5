"""`relay.disconnect`: a client's departure (its FIN or RST) seen from epoll's report, before
the tokens of the same loop turn, in the middle of a long turn when its work asks, and many at
once before any of them leaves the set. In process, real loopback sockets, gevent's loop."""

import os
import socket
import struct
import time
from collections.abc import Iterator

import gevent
import pytest
from gevent.hub import get_hub
from transport import loopback_pair, ready_socket, reported, wait_until

from flask_stopwire.relay import disconnect, priorities


@pytest.fixture
def connection() -> Iterator[tuple[socket.socket, socket.socket]]:
    """(our end, the client's end) of a loopback TCP connection."""
    ours, client = loopback_pair()
    yield ours, client
    ours.close()
    client.close()


def test_a_client_that_closes_is_seen_gone(connection) -> None:
    ours, client = connection
    gone: list[str] = []
    watch = disconnect.Watch(ours, lambda: gone.append("gone"))
    gevent.sleep(0.01)
    assert gone == []
    client.close()
    wait_until(lambda: gone == ["gone"], timeout=1)
    watch.close()


def test_a_client_that_resets_is_seen_gone(connection) -> None:
    ours, client = connection
    gone: list[str] = []
    watch = disconnect.Watch(ours, lambda: gone.append("gone"))
    client.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
    client.close()  # an RST
    wait_until(lambda: gone == ["gone"], timeout=1)
    watch.close()


def test_bytes_of_a_next_request_are_not_a_departure(connection) -> None:
    ours, client = connection
    departures = disconnect.departures()
    gone: list[str] = []
    watch = disconnect.Watch(ours, lambda: gone.append("gone"))
    client.sendall(b"GET /next HTTP/1.1\r\n\r\n")  # pipelined: readable, still open
    time.sleep(0.01)  # the bytes are in
    assert departures._epoll.poll(0) == []  # nothing to report: nobody is woken
    gevent.sleep(0.02)
    assert gone == []
    client.close()
    wait_until(lambda: gone == ["gone"], timeout=1)
    watch.close()


def test_a_departure_is_served_before_the_tokens_of_the_same_loop_turn(connection) -> None:
    ours, client = connection
    order: list[str] = []
    watch = disconnect.Watch(ours, lambda: order.append("departure"))
    # A provider socket with a token waiting.
    with ready_socket(order, "token", priorities.TOKENS) as watch_tokens:
        try:
            client.close()
            time.sleep(0.01)  # both are ready before the loop polls again
            watch_tokens()
            wait_until(lambda: len(order) == 2, timeout=1)
            assert order == ["departure", "token"]
        finally:
            watch.close()


def test_a_long_turn_of_the_loop_serves_a_departure_when_it_asks(connection) -> None:
    ours, client = connection
    order: list[str] = []
    watch = disconnect.Watch(ours, lambda: order.append("departure"))

    def busy_turn() -> None:  # the loop's own work, e.g. a burst of tokens
        client.close()
        time.sleep(0.002)  # blocks the loop: the FIN arrives, no poll
        disconnect.notice_departures()
        order.append("asked")

    try:
        get_hub().loop.run_callback(busy_turn)
        wait_until(lambda: "asked" in order, timeout=1)
        assert order == ["departure", "asked"]
    finally:
        watch.close()


def test_a_watch_of_a_socket_closed_first_leaves_the_next_owner_of_its_fd_watched(
    connection,
) -> None:
    ours, client = connection
    listener = socket.create_server(("127.0.0.1", 0))
    other_client = socket.create_connection(listener.getsockname())
    accepted, _ = listener.accept()
    listener.close()
    stale = disconnect.Watch(ours, lambda: None)
    fd = ours.fileno()
    ours.close()  # before its watch: the kernel drops the fd from the set, which reuses it
    os.dup2(accepted.fileno(), fd)  # the next connection gets the same fd
    accepted.close()
    reused = socket.socket(fileno=fd)
    gone: list[str] = []
    watch = disconnect.Watch(reused, lambda: gone.append("gone"))
    try:
        stale.close()  # must not stop watching the fd's new socket
        other_client.close()
        wait_until(lambda: gone == ["gone"], timeout=1)
    finally:
        watch.close()
        reused.close()
        client.close()


def test_a_socket_closed_before_it_is_watched_is_a_departure(connection) -> None:
    ours, _ = connection
    ours.close()  # the server closed it under us (fileno() is -1 now)
    gone: list[str] = []
    watch = disconnect.Watch(ours, lambda: gone.append("gone"))
    wait_until(lambda: gone == ["gone"], timeout=1)
    assert -1 not in disconnect.departures()._watches  # nothing left behind to dispatch
    watch.close()


class RecordingEpoll:
    """The departures' real epoll set, recording when a socket is taken out of it."""

    def __init__(self, epoll, order: list[str]):
        self._epoll = epoll
        self._order = order

    def __getattr__(self, name: str):
        return getattr(self._epoll, name)

    def unregister(self, fd: int) -> None:
        self._order.append(f"out {fd}")
        self._epoll.unregister(fd)


def departed(fd: int, order: list[str]):
    return lambda: order.append(f"gone {fd}")


def test_many_departures_at_once_are_all_served_before_any_leaves_the_set(monkeypatch) -> None:
    departures = disconnect.departures()
    order: list[str] = []
    monkeypatch.setattr(departures, "_epoll", RecordingEpoll(departures._epoll, order))
    pairs = [loopback_pair() for _ in range(3)]
    watches = [disconnect.Watch(ours, departed(ours.fileno(), order)) for ours, _ in pairs]
    try:
        for _, client in pairs:
            client.close()
        reported(departures, 3)
        departures.ask()
        fds = sorted(ours.fileno() for ours, _ in pairs)
        assert sorted(order[:3]) == [f"gone {fd}" for fd in fds]  # every departure first,
        assert sorted(order[3:]) == [f"out {fd}" for fd in fds]  # then out of the set
        assert departures._epoll.poll(0) == []  # nothing left behind to report again
    finally:
        for watch in watches:
            watch.close()
        for ours, _ in pairs:
            ours.close()


def test_a_departure_whose_handler_fails_is_logged_and_the_loop_watches_on(caplog) -> None:
    departures = disconnect.departures()
    pairs = [loopback_pair() for _ in range(3)]
    gone: list[int] = []

    def failing() -> None:
        gone.append(0)
        raise RuntimeError("the handler of a departure failed")

    watches = [disconnect.Watch(pairs[0][0], failing)]
    watches += [disconnect.Watch(pairs[i][0], lambda i=i: gone.append(i)) for i in (1, 2)]
    try:
        for _, client in pairs[:2]:
            client.close()
        wait_until(lambda: sorted(gone) == [0, 1], timeout=1)  # served by the loop
        assert "the handler of a departed client failed" in caplog.text
        assert departures._epoll.poll(0) == []  # the failed one is out of the set too
        pairs[2][1].close()  # a later departure: the loop still watches the set
        wait_until(lambda: sorted(gone) == [0, 1, 2], timeout=1)
    finally:
        for watch in watches:
            watch.close()
        for ours, _ in pairs:
            ours.close()

"""`relay.turns`: a new answer's start waits until the loop's turn served its sockets, and
a turn lets starts go on for about `TURN_S`, one at least. In process, on gevent's loop."""

import socket
import time
from collections.abc import Iterator

import gevent
import pytest
from gevent.hub import get_hub

from flask_stopwire.relay.turns import TURN_S, wait_turn


@pytest.fixture
def ready_socket() -> Iterator[socket.socket]:
    """A socket that is always readable: its watcher fires in every turn of the loop."""
    a, b = socket.socketpair()
    b.send(b"x")
    yield a
    a.close()
    b.close()


def every_turn(sock: socket.socket, order: list[str]) -> object:
    """A watcher that notes each turn of the loop (as a streaming answer's token would)."""
    io = get_hub().loop.io(sock.fileno(), 1)
    io.start(order.append, "turn")
    return io


def start(order: list[str], name: str, busy_s: float = 0.0) -> gevent.Greenlet:
    """A new answer's start: it waits its turn, then works `busy_s` without yielding."""

    def run() -> None:
        wait_turn()
        until = time.perf_counter() + busy_s
        while time.perf_counter() < until:
            pass
        order.append(name)

    return gevent.spawn(run)


def test_a_start_waits_until_the_sockets_ready_in_its_turn_were_served(
    ready_socket: socket.socket,
) -> None:
    order: list[str] = []
    io = every_turn(ready_socket, order)
    try:
        # Spawned greenlets run before the loop polls: without the wait, "start" came first.
        start(order, "start").join(timeout=2)
    finally:
        io.close()
    assert order[:2] == ["turn", "start"]


def test_a_turn_lets_starts_go_for_about_its_budget_then_serves_the_sockets_again(
    ready_socket: socket.socket,
) -> None:
    order: list[str] = []
    io = every_turn(ready_socket, order)
    try:
        starts = [start(order, f"start {i}", busy_s=0.6 * TURN_S) for i in range(10)]
        gevent.joinall(starts, timeout=5)
    finally:
        io.close()
    names = [name for name in order if name != "turn"]
    assert names == [f"start {i}" for i in range(10)]  # all of them, in order
    runs, run = [], 0
    for name in order:
        run = 0 if name == "turn" else run + 1
        runs.append(run)
    # Two fit in a turn's budget; a slow machine may fit fewer, never more than three.
    assert 1 <= max(runs) <= 3, order


def test_a_start_killed_while_it_waits_does_not_hold_up_the_others() -> None:
    order: list[str] = []
    killed = start(order, "killed")
    other = start(order, "other")
    gevent.sleep(0)  # both wait now
    killed.kill()
    other.join(timeout=2)
    assert order == ["other"]


def test_with_nothing_else_to_do_a_start_waits_no_more_than_a_turn() -> None:
    began = time.perf_counter()
    for _ in range(100):
        wait_turn()
    assert time.perf_counter() - began < 1.0  # ~20 µs each; never the loop's poll timeout

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
def turns() -> Iterator[list[str]]:
    """A list noting "turn" at each turn of the loop, from a watcher of an always-readable
    socket (as a streaming answer's token would be); starts note their names in it too."""
    order: list[str] = []
    a, b = socket.socketpair()
    b.send(b"x")
    io = get_hub().loop.io(a.fileno(), 1)
    io.start(order.append, "turn")
    yield order
    io.close()
    a.close()
    b.close()


def start(order: list[str], name: str, busy_s: float = 0.0) -> gevent.Greenlet:
    """A new answer's start: it waits its turn, then works `busy_s` without yielding."""

    def run() -> None:
        wait_turn()
        until = time.perf_counter() + busy_s
        while time.perf_counter() < until:
            pass
        order.append(name)

    return gevent.spawn(run)


def test_a_start_waits_until_the_sockets_ready_in_its_turn_were_served(turns: list[str]) -> None:
    # Spawned greenlets run before the loop polls: without the wait, "start" came first.
    start(turns, "start").join(timeout=2)
    assert turns[:2] == ["turn", "start"]


def test_a_turn_lets_starts_go_for_about_its_budget_then_serves_the_sockets_again(
    turns: list[str],
) -> None:
    starts = [start(turns, f"start {i}", busy_s=0.6 * TURN_S) for i in range(10)]
    gevent.joinall(starts, timeout=5)
    order = list(turns)
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

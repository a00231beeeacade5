"""`relay.turns`: work that can wait (a new answer's start, a stopped one's end) waits
until the loop's turn served its sockets, and a turn lets each lane's work go on for about
the lane's budget, one at least. In process, on gevent's loop."""

import socket
import time
from collections.abc import Iterator

import gevent
import pytest
from gevent.hub import Waiter, get_hub

from flask_stopwire.relay import disconnect
from flask_stopwire.relay.turns import ENDS, STARTS, in_turn, wait_turn


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


@pytest.fixture
def long_turns(request: pytest.FixtureRequest) -> Iterator[list[str]]:
    """As `turns`, but each turn's socket work takes 30 ms of CPU (or the parameter's
    seconds), as on a saturated worker."""
    cpu_s = getattr(request, "param", 0.03)
    order: list[str] = []
    a, b = socket.socketpair()
    b.send(b"x")

    def serve() -> None:
        order.append("turn")
        until = time.thread_time() + cpu_s
        while time.thread_time() < until:
            pass

    io = get_hub().loop.io(a.fileno(), 1)
    io.start(serve)
    yield order
    io.close()
    a.close()
    b.close()


def longest_run(order: list[str]) -> int:
    """The most works in one turn."""
    runs, run = [0], 0
    for name in order:
        run = 0 if name == "turn" else run + 1
        runs.append(run)
    return max(runs)


def start(
    order: list[str], name: str, busy_s: float = 0.0, lane: float = STARTS
) -> gevent.Greenlet:
    """A new answer's start: it waits its turn, then works `busy_s` without yielding."""

    def run() -> None:
        wait_turn(lane)
        until = time.perf_counter() + busy_s
        while time.perf_counter() < until:
            pass
        order.append(name)

    return gevent.spawn(run)


def test_a_start_waits_until_the_sockets_ready_in_its_turn_were_served(turns: list[str]) -> None:
    # Spawned greenlets run before the loop polls: without the wait, "start" came first.
    start(turns, "start").join(timeout=2)
    assert turns[:2] == ["turn", "start"]


@pytest.mark.parametrize("lane", [STARTS, ENDS], ids=["starts", "ends"])
def test_a_turn_lets_a_lane_go_for_about_its_budget_then_serves_the_sockets_again(
    turns: list[str], lane: float
) -> None:
    starts = [start(turns, f"start {i}", busy_s=0.6 * lane, lane=lane) for i in range(10)]
    gevent.joinall(starts, timeout=5)
    names = [name for name in turns if name != "turn"]
    assert names == [f"start {i}" for i in range(10)]  # all of them, in order
    # Two fit in a turn's budget; a slow machine may fit fewer, never more than three.
    assert 1 <= longest_run(turns) <= 3, turns


def test_in_a_long_turn_starts_get_as_long_as_the_rest_of_the_turn_took(
    long_turns: list[str],
) -> None:
    # 3 ms each: 5 ms a turn lets two go; 20 ms (the rest's 30, capped) about seven, fewer
    # on a loaded machine, whose clock runs on while the CPU is elsewhere.
    starts = [start(long_turns, f"start {i}", busy_s=0.003) for i in range(20)]
    gevent.joinall(starts, timeout=10)
    assert [n for n in long_turns if n != "turn"] == [f"start {i}" for i in range(20)]
    assert longest_run(long_turns) >= 4, long_turns


@pytest.mark.parametrize("long_turns", [0.1], indirect=True)
def test_however_long_a_turn_its_starts_get_at_most_20_ms(long_turns: list[str]) -> None:
    # 3 ms each: 20 ms lets seven go, and the one that ends past it; 100 ms would let 33.
    starts = [start(long_turns, f"start {i}", busy_s=0.003) for i in range(20)]
    gevent.joinall(starts, timeout=10)
    assert [n for n in long_turns if n != "turn"] == [f"start {i}" for i in range(20)]
    assert 1 <= longest_run(long_turns) <= 8, long_turns


def test_in_a_long_turn_ends_still_get_their_budget_alone(long_turns: list[str]) -> None:
    ends = [start(long_turns, f"end {i}", busy_s=0.6 * ENDS, lane=ENDS) for i in range(10)]
    gevent.joinall(ends, timeout=10)
    assert [n for n in long_turns if n != "turn"] == [f"end {i}" for i in range(10)]
    assert 1 <= longest_run(long_turns) <= 3, long_turns


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


def test_each_lane_has_its_own_budget_in_the_same_turn(turns: list[str]) -> None:
    # A start that uses up its lane's turn does not hold back the end waiting beside it.
    works = [start(turns, f"start {i}", busy_s=1.2 * STARTS) for i in range(2)]
    works += [start(turns, f"end {i}", lane=ENDS) for i in range(2)]
    gevent.joinall(works, timeout=5)
    first_turn = turns[1 : turns.index("turn", 1)]
    assert sorted(first_turn) == ["end 0", "end 1", "start 0"], turns


def test_a_sleeper_woken_in_turn_runs_once_the_sockets_were_served(turns: list[str]) -> None:
    waiter = Waiter()

    def sleeper() -> None:
        waiter.get()
        turns.append("woken")

    sleeping = gevent.spawn(sleeper)
    gevent.sleep(0)  # it sleeps now
    woken_at = len(turns)
    in_turn(ENDS, waiter)
    sleeping.join(timeout=2)
    # A wake-up from a callback would run before the loop's next poll: no turn between.
    assert "turn" in turns[woken_at : turns.index("woken")], turns


def test_a_client_that_leaves_while_a_lane_works_is_served_before_its_next_work() -> None:
    listener = socket.create_server(("127.0.0.1", 0))
    client = socket.create_connection(listener.getsockname())
    ours, _ = listener.accept()
    listener.close()
    order: list[str] = []
    watch = disconnect.Watch(ours, lambda: order.append("departure"))

    def leaving() -> None:  # a start during which the client leaves
        wait_turn()
        client.close()
        time.sleep(0.002)  # busy: the FIN arrives, no poll of the loop
        order.append("start 0")

    try:
        works = [gevent.spawn(leaving), start(order, "start 1")]
        gevent.joinall(works, timeout=5)
        # Without asking between two pieces of work, the departure waited for the next poll.
        assert order == ["start 0", "departure", "start 1"]
    finally:
        watch.close()
        ours.close()

"""Work that can wait takes turns with the tokens and stops of the answers streaming.

Two kinds of work reach a gevent worker in bursts, as batches of callbacks, and gevent
runs at least 50 callbacks before its loop polls the sockets again:

- `STARTS`, a burst of new chats: starting an answer costs about half a millisecond on
  the loop (the turn saved, the provider asked), so every token of the answers already
  streaming waited behind 25 ms and more of new chats (docs/token-path-profile.md);
- `ENDS`, a mass stop (a proxy restarting, a laptop closed on many tabs): each provider
  hears its stop at once, from the disconnect watcher, but what follows (the client's
  response ended, the provider's connection closed, the end recorded: about 0.2 ms)
  held up the next poll, and with it every departure not yet seen, by tens of ms.

Each waits in a lane of the loop's own. `wait_turn(lane)` (or `in_turn` for a sleeper
woken later) returns at the end of the loop's next turn: a check watcher of the lowest
priority runs once that turn's sockets and timers (the tokens, the stops) were served,
and lets the waiting work go on, in order, for up to the lane's budget (one at least,
so a busy worker still gets on with it). An idle watcher keeps the loop from sleeping
in its poll while any wait.

The budget of `STARTS` is gevent's own switch interval, the time it lets callbacks run
before it checks the clock; a smaller one kept tokens waiting less but started new chats
later (docs/token-path-profile.md). `ENDS` gets a fifth of it: nobody waits for that
bookkeeping, and a stop not yet seen waits behind it.

A saturated worker's turns are long: its streams' tokens take tens of milliseconds a
turn. There `STARTS` gets as long as the rest of the turn took of the worker's CPU (the
tokens, the stops, whatever else ran), up to 20 ms: with 5 ms a turn, a burst's last new
chats waited seconds for their first token (docs/token-path-profile.md, fourteenth
session). CPU time, not the clock's: time the machine took from the worker is no reason
to hold the tokens longer. The cap bounds what the starts' own follow-on work, counted
in the rest, could make of the next turn.
"""

import time
import weakref
from collections import deque

from gevent.hub import Hub, Waiter, get_hub

from flask_stopwire.relay import priorities
from flask_stopwire.relay.disconnect import notice_departures

STARTS = 0.005  # a lane is named by its budget: seconds of each loop turn
ENDS = 0.001
_LONGEST_START_TURN = 0.02  # STARTS in a long turn: the rest's CPU time, up to this


class Lane:
    """One event loop's queue of one kind of work."""

    def __init__(self, hub: Hub, budget_s: float, longest_s: float):  # holds no `hub`
        self._budget_s = budget_s
        self._longest_s = longest_s  # in a long turn, up to this (`budget_s`: none longer)
        self._rest_began = 0.0  # the thread's CPU time at this lane's last let-go
        self._waiting: deque[Waiter] = deque()
        self._check = hub.loop.check(priority=priorities.LANES)
        self._awake = hub.loop.idle(priority=priorities.LANES)

    def wait(self) -> None:
        waiter = Waiter()  # this thread's hub
        self.add(waiter)
        waiter.get()  # a waiter whose greenlet was killed meanwhile is let go harmlessly

    def add(self, waiter: Waiter) -> None:
        """Switch to `waiter` in its turn (a sleeping greenlet's, or our own)."""
        self._waiting.append(waiter)
        if not self._check.active:
            self._rest_began = time.thread_time()
            self._check.start(self._let_go)
            self._awake.start(_nothing)

    def _let_go(self) -> None:
        """One waiting piece of work at least, then more until this turn spent the budget
        (in a long turn, as long as the rest of it took, up to the lane's longest)."""
        rest_s = time.thread_time() - self._rest_began
        until = time.perf_counter() + min(self._longest_s, max(self._budget_s, rest_s))
        while self._waiting:
            self._waiting.popleft().switch(None)  # back here once that work waits on I/O
            notice_departures()  # a client that left meanwhile is not kept waiting
            if time.perf_counter() > until:
                break
        self._rest_began = time.thread_time()
        if not self._waiting:
            self._check.stop()
            self._awake.stop()


def _nothing() -> None:
    pass


_lanes: "weakref.WeakKeyDictionary[Hub, dict[float, Lane]]" = weakref.WeakKeyDictionary()


def _lane(budget_s: float) -> Lane:
    hub = get_hub()
    lanes = _lanes.get(hub)
    if lanes is None:
        lanes = _lanes[hub] = {}
    lane = lanes.get(budget_s)
    if lane is None:
        longest_s = _LONGEST_START_TURN if budget_s == STARTS else budget_s
        lane = lanes[budget_s] = Lane(hub, budget_s, longest_s)
    return lane


def wait_turn(lane: float = STARTS) -> None:
    """Wait for this work's turn in `lane` (see the module); from any greenlet but the hub."""
    _lane(lane).wait()


def in_turn(lane: float, waiter: Waiter) -> None:
    """Wake the greenlet sleeping on `waiter` in its turn in `lane` (from any greenlet)."""
    _lane(lane).add(waiter)

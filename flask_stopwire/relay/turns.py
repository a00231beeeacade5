"""New answers take turns with the answers already streaming.

A burst of new chats reaches a gevent worker as a batch of callbacks, and gevent runs
at least 50 callbacks before its loop polls the sockets again. Starting an answer
costs about half a millisecond on the loop (the turn saved, the provider asked), so in
a burst every token of the answers already streaming waited behind 25 ms and more of
new chats (docs/token-path-profile.md).

`wait_turn()` is called where an answer's start does that work. It returns at the end
of the loop's next turn: a check watcher of the lowest priority runs once that turn's
sockets and timers (the tokens, the stops) were served, and lets the waiting starts go
on, in order, for up to `TURN_S` of it (one at least, so a busy worker still starts
new answers). An idle watcher keeps the loop from sleeping in its poll while any wait.

`TURN_S` is gevent's own switch interval, the time it lets callbacks run before it
checks the clock (and it checks only every 50 callbacks). A smaller turn kept tokens
waiting less but started new chats later (docs/token-path-profile.md).
"""

import time
import weakref
from collections import deque

from gevent.hub import Hub, Waiter, get_hub

TURN_S = 0.005
_LAST = -2  # libev's lowest priority: after every socket and timer of the turn


class Turns:
    """One event loop's queue of answer starts."""

    def __init__(self, hub: Hub):  # holds no reference to `hub`: it keys a weak dict
        self._waiting: deque[Waiter] = deque()
        self._check = hub.loop.check(priority=_LAST)
        self._awake = hub.loop.idle(priority=_LAST)

    def wait(self) -> None:
        waiter = Waiter()  # this thread's hub
        self._waiting.append(waiter)
        if not self._check.active:
            self._check.start(self._let_go)
            self._awake.start(_nothing)
        waiter.get()  # a waiter whose greenlet was killed meanwhile is let go harmlessly

    def _let_go(self) -> None:
        """One waiting start at least, then more until this turn has spent `TURN_S`."""
        until = time.perf_counter() + TURN_S
        while self._waiting:
            self._waiting.popleft().switch(None)  # back here once that start waits on I/O
            if time.perf_counter() > until:
                break
        if not self._waiting:
            self._check.stop()
            self._awake.stop()


def _nothing() -> None:
    pass


_turns: "weakref.WeakKeyDictionary[Hub, Turns]" = weakref.WeakKeyDictionary()


def wait_turn() -> None:
    """Wait for this start's turn (see the module); from any greenlet but the hub."""
    hub = get_hub()
    turns = _turns.get(hub)
    if turns is None:
        turns = _turns[hub] = Turns(hub)
    turns.wait()

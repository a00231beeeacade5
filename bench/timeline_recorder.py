"""Inside a Stopwire worker (bench/timeline_gunicorn.py): what its loop did, when.

Records, on the monotonic clock every process of the host shares:
- `served`: a batch of departures served (`Departures._serve`), and how many;
- `fin`: our FIN to one provider (`Generation._hang_up`);
- `gc`: a garbage collection pass, and its generation;
- `stall`: the loop came back to a 1 ms timer more than `STALL_S` late, from when it was
  due to when it ran, and the share of that time the worker was on the CPU (its own work)
  rather than waiting for a core (the machine's other processes).

Each record is a line `kind start end number`, appended to `$BENCH_TIMELINE` four times a
second by the loop itself (a write of a few hundred bytes). Wrapping private methods is
what a probe may do; tests/test_bench.py runs it, so a rename cannot break it unseen.
"""

import gc
import os
import time

from gevent.hub import get_hub

from flask_stopwire.relay import disconnect, generation

STALL_S = 0.003
_TICK_S = 0.001
_FLUSH_S = 0.25

_records: list[tuple[str, float, float, int]] = []


def start() -> None:
    """Record from now on, in this worker."""
    _wrap(disconnect.Departures, "_serve", "served", lambda args: len(args[1]))
    _wrap(generation.Generation, "_hang_up", "fin", lambda args: 1)
    gc.callbacks.append(_collection)
    loop = get_hub().loop
    tick = loop.timer(_TICK_S, _TICK_S)
    tick.start(_ticked, [time.monotonic(), time.thread_time()])
    flush = loop.timer(_FLUSH_S, _FLUSH_S)
    flush.start(_flush)


def _wrap(cls: type, name: str, kind: str, number) -> None:
    original = getattr(cls, name)

    def recorded(*args):
        began = time.monotonic()
        try:
            return original(*args)
        finally:
            _records.append((kind, began, time.monotonic(), number(args)))

    setattr(cls, name, recorded)


_began: list[float] = [0.0]


def _collection(phase: str, info: dict) -> None:
    if phase == "start":
        _began[0] = time.monotonic()
    else:
        _records.append(("gc", _began[0], time.monotonic(), info["generation"]))


def _ticked(last: list[float]) -> None:
    now, cpu = time.monotonic(), time.thread_time()
    due = last[0] + _TICK_S
    if now - due > STALL_S:
        on_cpu = min(100, round(100 * (cpu - last[1]) / (now - last[0])))
        _records.append(("stall", due, now, on_cpu))
    last[:] = now, cpu


def _flush() -> None:
    if not _records:
        return
    lines = "".join(f"{kind} {began:.6f} {ended:.6f} {n}\n" for kind, began, ended, n in _records)
    _records.clear()
    with open(os.environ["BENCH_TIMELINE"], "a") as out:
        out.write(lines)

"""Inside a Stopwire worker (bench/timeline_gunicorn.py): what its loop did, when.

Records, on the monotonic clock every process of the host shares:
- `served`: a batch of departures served (`Departures._serve`), and how many of them were
  clients it watched;
- `fin`: our FIN to one provider (`Generation._hang_up`, when it sent one);
- `gc`: a garbage collection pass, and its generation;
- `stall`: two runs of a 1 ms timer more than `STALL_S` apart, and how the loop's thread
  spent that time: on a core (its CPU clock), queued for one while other threads had the
  cores (the kernel's account, `/proc/thread-self/schedstat`), or neither (blocked: the
  GIL held by another thread, a system call that waited; or time the hypervisor took).

Each record is a line `kind start end value [value]`, appended to `$BENCH_TIMELINE` four
times a second by the loop itself: during a mass abort a few kilobytes, one write. The
recording costs the loop a timer a millisecond and two clock reads per FIN and batch: it is
in what it measures. Wrapping private methods is what a probe may do; tests/test_bench.py
runs it, so a rename cannot break it unseen.
"""

import gc
import os
import time

from gevent.hub import get_hub

from flask_stopwire.relay import disconnect, generation

STALL_S = 0.003
_TICK_S = 0.001
_FLUSH_S = 0.25

_records: list[tuple] = []


def start() -> None:
    """Record from now on, in this worker, to `$BENCH_TIMELINE`."""
    path = os.environ["BENCH_TIMELINE"]
    _record_departures()
    _record_fins()
    gc.callbacks.append(_collection)
    loop = get_hub().loop
    tick = loop.timer(_TICK_S, _TICK_S)
    # This thread's own account (the loop's), read without reopening it: a microsecond.
    schedstat = os.open("/proc/thread-self/schedstat", os.O_RDONLY)
    tick.start(_ticked, schedstat, [time.monotonic(), *_schedstat(schedstat)])
    flush = loop.timer(_FLUSH_S, _FLUSH_S)
    flush.start(_flush, path)


def _record_departures() -> None:
    serve = disconnect.Departures._serve

    def recorded(self, reported):
        watched = sum(fd in self._watches for fd, _ in reported)  # popped as they are served
        began = time.monotonic()
        try:
            return serve(self, reported)
        finally:
            _records.append(("served", began, time.monotonic(), watched))

    disconnect.Departures._serve = recorded


def _record_fins() -> None:
    hang_up = generation.Generation._hang_up

    def recorded(self):
        before, began = self.closed_at, time.monotonic()
        sent = hang_up(self)
        if self.closed_at is not before:  # set only once our FIN went out
            _records.append(("fin", began, time.monotonic(), 1))
        return sent

    generation.Generation._hang_up = recorded


_collecting_since = [0.0]


def _collection(phase: str, info: dict) -> None:
    if phase == "start":
        _collecting_since[0] = time.monotonic()
    else:
        _records.append(("gc", _collecting_since[0], time.monotonic(), info["generation"]))


def _schedstat(schedstat: int) -> tuple[int, int]:
    """Nanoseconds this thread ran on a core, and waited queued for one. The kernel's own
    count of the first lags while the thread runs; its CPU clock's does not."""
    queued = os.pread(schedstat, 64, 0).split()[1]
    return time.thread_time_ns(), int(queued)


def _ticked(schedstat: int, last: list) -> None:
    """Between two runs: the wall time, and the shares of it on a core and queued for one."""
    now = time.monotonic()
    on_cpu, queued = _schedstat(schedstat)
    window = now - last[0]
    if window > _TICK_S + STALL_S:
        shares = (
            round((on_cpu - last[1]) / window / 1e7),
            round((queued - last[2]) / window / 1e7),
        )
        _records.append(("stall", last[0], now, *shares))
    last[:] = now, on_cpu, queued


def _flush(path: str) -> None:
    batch = _records[:]  # a collection may append meanwhile: only what was taken is dropped
    if not batch:
        return
    del _records[: len(batch)]
    lines = "".join(" ".join(map(str, record)) + "\n" for record in batch)
    with open(path, "a") as out:
        out.write(lines)

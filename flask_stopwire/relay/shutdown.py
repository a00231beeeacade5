"""Worker shutdown: on SIGTERM, interrupt every live generation at once.

gunicorn's SIGTERM only stops accepting and lets requests run until the graceful
timeout, when the arbiter SIGKILLs the worker and no `finally` runs. Streams can run
for minutes, so instead each one is closed upstream, saved as `interrupted` (reason
`shutdown`) and sent its final `done` right away; then the worker exits on its own.
"""

import signal
from collections.abc import Callable
from typing import Any

import gevent


def interrupt_on_sigterm(interrupt_all: Callable[[], object]) -> None:
    """Chain a SIGTERM handler that runs `interrupt_all`, then defers to the handler
    that was there (gunicorn's)."""
    previous = signal.getsignal(signal.SIGTERM)

    def on_sigterm(signum: int, frame: Any) -> None:
        gevent.spawn(interrupt_all)  # a signal handler must not block: spawn
        if callable(previous):
            previous(signum, frame)

    signal.signal(signal.SIGTERM, on_sigterm)

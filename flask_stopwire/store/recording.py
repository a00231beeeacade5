"""Live answers written to the store while they stream, and answers whose worker died.

Each worker beats once per `flush_s`: one transaction that saves the partial text of
every answer it is streaming, renews its claim on them, and marks answers whose owner
stopped beating (a worker killed with -9 runs no `finally`) `interrupted` for
`worker_lost`. A crash so loses at most about one flush interval of text.
"""

import logging
import os
from dataclasses import dataclass

import gevent

from flask_stopwire.relay.generation import Generation
from flask_stopwire.store.sqlite import SqliteStore, new_id

log = logging.getLogger(__name__)


@dataclass
class LiveAnswer:
    """An answer being streamed: the generation writing it and the text it extends."""

    message_id: str
    generation: Generation
    prefix: str = ""  # the saved text a continuation appends to
    flushed: str = ""

    def content(self, final: bool = False) -> str:
        text = self.generation.kept_text() if final else self.generation.text()
        return self.prefix + text


class Recorder:
    """This worker's live answers, its heartbeat, and the sweep for lost ones."""

    def __init__(self, store: SqliteStore, flush_s: float, lost_after_s: float):
        self.store = store
        self.flush_s = flush_s
        self.lost_after_s = lost_after_s
        self.owner = ""
        self._live: dict[str, LiveAnswer] = {}
        self._pid: int | None = None
        self._beating: gevent.Greenlet | None = None

    def start(self) -> None:
        """Start beating, once per process (a forked worker starts its own)."""
        if self._pid == os.getpid():
            return
        self._pid = os.getpid()
        self.owner = new_id("worker")
        self._live.clear()
        self._beating = gevent.spawn(self._beat_forever)

    def close(self) -> None:
        """Stop beating (the answers it tracks are then no longer claimed)."""
        if self._beating is not None and self._pid == os.getpid():
            self._beating.kill()
        self._beating, self._pid = None, None

    def track(self, generation: Generation, message_id: str, prefix: str = "") -> None:
        """Flush this generation's text into `message_id` until it ends."""
        self._live[generation.id] = LiveAnswer(message_id, generation, prefix)

    def finish(self, generation: Generation) -> None:
        """Save the final text, status, reason, usage and receipt together."""
        answer = self._live.pop(generation.id, None)
        if answer is None:
            return
        summary = generation.summary()
        self.store.finish_answer(
            answer.message_id,
            {
                "content": answer.content(final=True),
                "status": summary["status"],
                "reason": summary["reason"],
                "usage": summary["usage"],
                "receipt": summary.get("receipt"),
            },
        )

    def beat(self) -> int:
        """Flush changed texts, renew our claims, sweep lost answers; returns how many."""
        changed = []
        for answer in list(self._live.values()):
            content = answer.content()
            if content != answer.flushed:
                changed.append((answer.message_id, content))
                answer.flushed = content
        lost = self.store.heartbeat(self.owner, changed, self.lost_after_s)
        if lost:
            log.warning("marked %d answers interrupted: their worker was lost", lost)
        return lost

    def _beat_forever(self) -> None:
        while True:
            gevent.sleep(self.flush_s)
            try:
                self.beat()
            except Exception:
                log.exception("heartbeat failed; retrying in %ss", self.flush_s)

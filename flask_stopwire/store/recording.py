"""Live answers written to the store while they stream, and answers whose worker died.

Each worker beats once per `flush_s`: one transaction that saves the partial text of
every answer it is streaming, renews its claim on them, and marks answers whose owner
stopped beating (a worker killed with -9 runs no `finally`) `interrupted` for
`worker_lost`. A crash so loses at most about one flush interval of text.
"""

import logging
import math
import os
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import gevent

from flask_stopwire.relay.generation import Generation
from flask_stopwire.store.sql import SqlStore, new_id

log = logging.getLogger(__name__)


RETRY_FIRST_S = 0.5
RETRY_MAX_S = 30.0


@dataclass
class LiveAnswer:
    """An answer being streamed: the generation writing it and the text it extends."""

    message_id: str
    generation: Generation
    prefix: str = ""  # the saved text a continuation appends to
    flushed: str = ""
    final: dict[str, Any] | None = None  # its last state, once the generation ended

    def content(self, final: bool = False) -> str:
        text = self.generation.kept_text() if final else self.generation.text()
        return self.prefix + text


class Recorder:
    """This worker's live answers, its heartbeat, and the sweep for lost ones.

    An answer stays claimed (its row's heartbeat renewed) exactly as long as this
    worker tracks it: while it streams, and after it ended until its final state is
    saved. A final save that fails is retried with backoff while the worker lives, and
    its generation is told, so the client hears the answer was not saved.
    """

    def __init__(
        self,
        store: SqlStore,
        flush_s: float,
        lost_after_s: float,
        running: Callable[[], list[str]] = list,
    ):
        self.store = store
        self.running = running  # ids of this worker's running generations: their slots
        self.flush_s = flush_s
        self.lost_after_s = lost_after_s
        self.owner = ""
        self._live: dict[str, LiveAnswer] = {}
        self._sweep_from = 0.0  # monotonic time from which our beats may sweep again
        self._pid: int | None = None
        self._beating: gevent.Greenlet | None = None

    def start(self) -> None:
        """Start beating, once per process (a forked worker starts its own)."""
        if self._pid == os.getpid():
            return
        self._pid = os.getpid()
        self.owner = new_id("worker")
        self._live.clear()
        self._sweep_from = 0.0
        self._beating = gevent.spawn(self._beat_forever)

    def close(self) -> None:
        """Stop beating (the answers it tracks are then no longer claimed)."""
        if self._beating is not None and self._pid == os.getpid():
            self._beating.kill()
        self._beating, self._pid = None, None

    def track(self, generation: Generation, message_id: str, prefix: str = "") -> None:
        """Flush this generation's text into `message_id` until it ends."""
        self._live[generation.id] = LiveAnswer(message_id, generation, prefix)

    def finish(self, generation: Generation) -> bool:
        """Save the final text, status, reason, usage and receipt together.

        False when that failed: the save is then retried in the background.
        """
        answer = self._live.get(generation.id)
        if answer is None:
            return True
        summary = generation.summary()
        answer.final = {
            "content": answer.content(final=True),
            "status": summary["status"],
            "reason": summary["reason"],
            "usage": summary["usage"],
            "receipt": summary.get("receipt"),
        }
        try:
            self._save_final(answer)
        except Exception:
            log.exception("saving the end of generation %s failed; retrying", generation.id)
            gevent.spawn(self._retry_final, answer)
            return False
        return True

    def beat(self) -> int:
        """Flush changed texts, renew our claims, sweep lost answers; returns how many.

        When the database would not take our beat (disk full, read-only, locked), it
        would not take the other workers' either: their claims went stale through no
        fault of theirs. So after a beat that failed, we sweep again only `lost_after_s`
        after the database took a write of ours again (our claims, or the stale answers
        rewritten as they are); after a beat that waited longer than `flush_s` for the
        database, `lost_after_s` after it.
        """
        answers = list(self._live.values())
        streaming = [a for a in answers if a.final is None]
        texts = ((a.message_id, a.content(), a.flushed) for a in streaming)
        changed = {message_id: text for message_id, text, flushed in texts if text != flushed}
        claims = [a.message_id for a in answers]
        started = time.monotonic()
        sweep = started >= self._sweep_from
        try:
            touched = self.store.heartbeat(
                claims, list(changed.items()), self.lost_after_s, self.running(), sweep
            )
        except Exception:
            self._sweep_from = math.inf
            raise
        ended = time.monotonic()
        wrote_again = self._sweep_from == math.inf and (claims or touched)
        if wrote_again or ended - started > self.flush_s:
            self._sweep_from = ended + self.lost_after_s
        lost = touched if sweep else 0
        for answer in answers:
            answer.flushed = changed.get(answer.message_id, answer.flushed)
        if lost:
            log.warning("marked %d answers interrupted: their worker was lost", lost)
        return lost

    def _save_final(self, answer: LiveAnswer) -> None:
        self.store.finish_answer(answer.message_id, answer.final)
        self._live.pop(answer.generation.id, None)  # saved: no longer ours to claim

    def _retry_final(self, answer: LiveAnswer) -> None:
        delay = RETRY_FIRST_S
        while True:
            gevent.sleep(delay)
            try:
                self._save_final(answer)
            except Exception as exc:
                log.warning("saving generation %s failed again: %r", answer.generation.id, exc)
                delay = min(2 * delay, RETRY_MAX_S)
            else:
                log.info("saved the end of generation %s after all", answer.generation.id)
                return

    def _beat_forever(self) -> None:
        while True:
            gevent.sleep(self.flush_s)
            try:
                self.beat()
            except Exception:
                log.exception("heartbeat failed; retrying in %ss", self.flush_s)

"""This worker's generations: live ones to stop, and recent outcomes so stops are idempotent."""

from collections import OrderedDict
from typing import Any

from flask_stopwire.relay.generation import Generation

REMEMBER = 10_000
REPLAYABLE = 500  # ended answers whose text is kept for a returning viewer
SETTLE_WAIT_S = 3.0


class Registry:
    """Generation ids to live generations and, once ended, to their final summary."""

    def __init__(self, remember: int = REMEMBER, replayable: int = REPLAYABLE):
        self._live: dict[str, Generation] = {}
        # id -> (owner, final summary)
        self._ended: OrderedDict[str, tuple[str, dict[str, Any]]] = OrderedDict()
        self._remember = remember
        # id -> the text it kept, for the latest ended answers (saved ones are also stored)
        self._texts: OrderedDict[str, str] = OrderedDict()
        self._replayable = replayable
        self._closing = False  # the worker is shutting down

    def add(self, generation: Generation) -> None:
        """Make a generation stoppable by id. Once the worker is shutting down it is
        interrupted at once: a request that was on its way (waiting its turn, say) when
        the others were interrupted must not hold the worker until its graceful timeout."""
        self._live[generation.id] = generation
        if self._closing:
            generation.stop("shutdown", status="interrupted")

    def finish(self, generation: Generation) -> None:
        """Forget a live generation, keeping its final summary for late stops."""
        self._live.pop(generation.id, None)
        self._ended[generation.id] = (generation.user_id, generation.summary())
        self._texts[generation.id] = generation.kept_text()
        while len(self._ended) > self._remember:
            self._ended.popitem(last=False)
        while len(self._texts) > self._replayable:
            self._texts.popitem(last=False)

    def live(self, user_id: str, generation_id: str) -> Generation | None:
        """`user_id`'s generation `generation_id`, while it streams on this worker."""
        generation = self._live.get(generation_id)
        return generation if generation is not None and generation.user_id == user_id else None

    def ended(self, user_id: str, generation_id: str) -> tuple[dict[str, Any], str] | None:
        """The final summary and kept text of `user_id`'s recently ended generation."""
        owner, summary = self._ended.get(generation_id, ("", None))
        text = self._texts.get(generation_id)
        if owner != user_id or summary is None or text is None:
            return None
        return summary, text

    def stop(
        self, user_id: str, generation_id: str, seen_chars: int | None = None
    ) -> dict[str, Any] | None:
        """A user's stop: wait until the provider is closed and the outcome recorded.

        Returns the summary that stands (a generation that already ended keeps its
        own), or None when this worker never had that id for this user.
        """
        generation = self._live.get(generation_id)
        if generation is None:
            owner, summary = self._ended.get(generation_id, ("", None))
            return summary if owner == user_id else None
        if generation.user_id != user_id:
            return None  # someone else's answer is as good as unknown
        generation.stop("user_stop", seen_chars=seen_chars)
        generation.wait_settled(SETTLE_WAIT_S)
        return generation.summary()

    def holds(self, user_id: str, generation_id: str) -> bool:
        """Whether `user_id`'s generation `generation_id` streams on this worker now."""
        return self.live(user_id, generation_id) is not None

    def interrupt_all(self) -> int:
        """Interrupt every live generation (the worker is shutting down), and any added later."""
        self._closing = True
        live = list(self._live.values())
        for generation in live:
            generation.stop("shutdown", status="interrupted")
        for generation in live:
            generation.wait_settled(SETTLE_WAIT_S)
        return len(live)

    def live_ids(self) -> list[str]:
        """The ids of the generations streaming now."""
        return list(self._live)

    def live_count(self) -> int:
        """How many generations are streaming now."""
        return len(self._live)

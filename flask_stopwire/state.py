"""`StopwireState`: one app's provider, store, live generations, stop routes and metrics.

It lives in `app.extensions["stopwire"]` and is reached through `get_stopwire()`.
Per-worker resources (the heartbeat greenlet, the stop socket, the DB thread, the
provider session) start on first use or in gunicorn's `post_worker_init`, never at
import or in `init_app`: with `--preload` those run in the master, before the fork.
"""

import atexit
import os
import weakref
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import Any

import requests
from flask import Flask, current_app

from flask_stopwire import history
from flask_stopwire.identity import Identity, IdentityHook, current_identity
from flask_stopwire.limits import MessageLimit
from flask_stopwire.providers import make_provider
from flask_stopwire.providers.base import Message, Provider
from flask_stopwire.providers.http import new_session
from flask_stopwire.relay.bus import StopBus
from flask_stopwire.relay.generation import (
    Generation,
    RelayEvent,
    RelaySettings,
    new_generation_id,
)
from flask_stopwire.relay.mirror import Mirror
from flask_stopwire.relay.peers import Peers
from flask_stopwire.relay.registry import Registry
from flask_stopwire.settings import SettingError, Settings
from flask_stopwire.store import open_store
from flask_stopwire.store.recording import Recorder
from flask_stopwire.telemetry import Metrics
from flask_stopwire.web.errors import ApiError

EXTENSION_KEY = "stopwire"

# Every state of this process, for the gunicorn hooks: they find it whatever WSGI
# middleware wraps the app. Weak, so a discarded app (tests) takes its state along.
_states: "weakref.WeakSet[StopwireState]" = weakref.WeakSet()


def get_stopwire(app: Flask | None = None) -> "StopwireState":
    """The Stopwire state of `app`, or of the current app."""
    app = app or current_app
    try:
        return app.extensions[EXTENSION_KEY]
    except KeyError:
        raise RuntimeError("Stopwire is not initialised on this app: call init_app") from None


def process_states() -> list["StopwireState"]:
    """Every Stopwire state alive in this process (what the gunicorn hooks act on)."""
    return list(_states)


class StopwireState:
    """One app's provider, store, live generations, stop routes and metrics."""

    def __init__(
        self, settings: Settings, instance_path: str, identity_hook: IdentityHook | None = None
    ):
        self.settings = settings
        self.identity_hook = identity_hook
        self.provider: Provider = _provider(settings)
        self.relay_settings = RelaySettings(
            heartbeat_s=settings.heartbeat_s,
            connect_timeout_s=settings.connect_timeout_s,
            read_timeout_s=settings.read_timeout_s,
            api_key=settings.api_key,
        )
        # SQLite in the instance folder unless STOPWIRE_DATABASE names a file or a
        # postgresql:// server (flask_stopwire/store/__init__.py picks).
        self.store = open_store(
            settings.database or os.path.join(instance_path, "stopwire.sqlite3")
        )
        self.registry = Registry()
        self.recorder = Recorder(
            self.store, settings.flush_s, settings.lost_after_s, self.registry.live_ids
        )
        self.peers = Peers(settings.run_dir, self.registry.stop, self._view_here)
        # Other hosts' stops, only with STOPWIRE_REDIS_URL (redis is imported on first use).
        self.bus = (
            StopBus(
                settings.redis_url, self.registry.stop, self.registry.holds, self.registry.live_ids
            )
            if settings.redis_url
            else None
        )
        # Answers running on with no viewer, for a viewer that returns on another host.
        self.mirror = Mirror(settings.redis_url) if settings.redis_url else None
        self.metrics = Metrics()
        # The rate limit for WebSocket messages, when there is one (set by the extension).
        self.message_limit: MessageLimit | None = None
        # What a shutdown closes once the answers are interrupted (open WebSockets, which
        # would otherwise hold the worker until its graceful timeout).
        self.on_shutdown: set[Callable[[], None]] = set()
        self._session: requests.Session | None = None
        self._session_pid: int | None = None
        _states.add(self)
        atexit.register(_close_if_alive, weakref.ref(self))

    def identity(self) -> Identity:
        """Who is asking (resolved once per request); ApiError 401/403 otherwise."""
        return current_identity(self.identity_hook, self.settings.client_keys)

    def start(self) -> None:
        """Start this worker's heartbeat, stop socket and stop-bus listener (idempotent,
        per process)."""
        self.peers.serve()
        if self.bus is not None:
            self.bus.start()
        self.recorder.start()

    @contextmanager
    def admitted(self) -> Iterator[str]:
        """A new generation id, within this identity's cap of running answers.

        ApiError 429 when the cap is reached. The slot is given back if the block
        raises, else when the generation ends (on whichever worker ran it), or is
        dropped unviewed. Its caller has waited for the loop's turn first (relay/turns.py).
        """
        generation_id = new_generation_id()
        cap = self.settings.max_active_per_user
        if not cap:
            yield generation_id
            return
        key = self.identity().limit_key
        if not self.store.claim_slot(key, generation_id, cap, self.settings.lost_after_s):
            self.metrics.refused.labels("running").inc()
            raise ApiError(
                429,
                f"too many answers running at once (the limit is {cap}); stop one first",
                retry_after=1,
            )
        try:
            yield generation_id
        except BaseException:
            self.store.release_slot(generation_id)
            raise

    def new_generation(
        self,
        messages: list[Message],
        user_id: str,
        generation_id: str = "",
        options: dict[str, Any] | None = None,
        grace_s: float = 0.0,
    ) -> Generation:
        """`user_id`'s generation, ready to run (nothing starts until its events are iterated)."""
        generation = Generation(
            self.provider,
            messages,
            self._provider_session(),
            self.relay_settings,
            self._ended,
            generation_id,
            options,
            user_id,
            grace_s,
        )
        if self.bus is not None:
            generation.before_call = self.bus.check  # a stop recorded before it started
        if self.mirror is not None and grace_s > 0:
            generation.on_unviewed = self.mirror.start
            generation.viewed_elsewhere = self.mirror.viewed_elsewhere
        return generation

    def generation_for(self, request: dict[str, Any]) -> Generation:
        """The generation a request (`web.api.ask`) describes, ready to run.

        A conversation's request saved for later holds no messages: they are read
        now, as they stand (its new answer, empty, is left out)."""
        if "messages" in request:
            messages = [Message(role, content) for role, content in request["messages"]]
        else:
            conversation = self.store.get_conversation(
                request["user_id"], request["conversation_id"]
            )
            if conversation is None:  # deleted before anyone viewed its answer
                raise ApiError(404, f"no conversation {request['conversation_id']!r}")
            messages = history.provider_messages(conversation["messages"])
        generation = self.new_generation(
            messages, request["user_id"], request["generation_id"], grace_s=request["grace_s"]
        )
        generation.discard = request["discard"]
        generation.meta.update(
            conversation_id=request["conversation_id"], message_id=request["message_id"]
        )
        return generation

    def live_fields(self, generation_id: str) -> dict[str, str]:
        """What a streaming answer records about who writes it."""
        return {
            "generation_id": generation_id,
            "owner": self.recorder.owner,
            "model": self.provider.model,
        }

    def run(
        self,
        generation: Generation,
        client_sock: Any,
        message_id: str = "",
        prefix: str = "",
        after: int | None = None,
    ) -> Iterator[RelayEvent]:
        """The generation's first viewer's events. From then until it ends the
        generation is stoppable by id (from any worker) and viewable again
        (`view`), and saved into `message_id` (after `prefix`) when one is given."""
        self.start()
        if message_id:
            self.recorder.track(generation, message_id, prefix)
        self.metrics.active.inc()
        self.registry.add(generation)  # last: while shutting down, it ends here, recorded
        yield from generation.events(client_sock, after)

    def view(
        self, user_id: str, generation_id: str, after: int | None, client_sock: Any
    ) -> Iterator[RelayEvent] | None:
        """A returning viewer's events from character `after` on, of a generation that
        streams on this worker or a sibling; None when none holds it for `user_id`."""
        viewing = self._view_here(user_id, generation_id, after, client_sock)
        if viewing is None:
            viewing = self.peers.view_elsewhere(user_id, generation_id, after, client_sock)
        return viewing

    def _view_here(
        self, user_id: str, generation_id: str, after: int | None, client_sock: Any
    ) -> Iterator[RelayEvent] | None:
        generation = self.registry.live(user_id, generation_id)
        return None if generation is None else generation.events(client_sock, after)

    def stop(
        self, user_id: str, generation_id: str, seen_chars: int | None
    ) -> dict[str, Any] | None:
        """Stop `user_id`'s generation on this worker, a sibling or (with Redis) another
        host; None when no worker holds it for that user.

        StopBusDown when it may be on another host but Redis cannot be asked.
        """
        summary = self.registry.stop(user_id, generation_id, seen_chars)
        if summary is None:
            summary = self.peers.stop_elsewhere(user_id, generation_id, seen_chars)
        if summary is None and self.bus is not None:
            summary = self.bus.stop_remote(user_id, generation_id, seen_chars)
        return summary

    def interrupt_all(self) -> int:
        """Close every live generation of this worker upstream (a shutdown), then what
        keeps connections open between answers; returns how many generations."""
        interrupted = self.registry.interrupt_all()
        for close in list(self.on_shutdown):
            close()
        return interrupted

    def close(self) -> None:
        """Release the heartbeat, the stop socket, the stop bus and mirror, the DB thread
        and the provider session."""
        self.recorder.close()
        self.peers.close()
        if self.bus is not None:
            self.bus.close()
        if self.mirror is not None:
            self.mirror.close()
        self.store.close()
        if self._session is not None:
            self._session.close()
            self._session = None
        _states.discard(self)

    def _ended(self, generation: Generation) -> bool:
        """Record a generation's end, once, whichever viewer (or none) was there."""
        generation.saved = self.recorder.finish(generation)
        self.metrics.ended(generation, self.settings.provider, self.provider.model)
        self.metrics.active.dec()
        self.registry.finish(generation)
        if self.settings.max_active_per_user:
            self.store.release_slot(generation.id)
        return generation.saved

    def _provider_session(self) -> requests.Session:
        # Per process, after gunicorn forked and gevent patched the worker.
        if self._session is None or self._session_pid != os.getpid():
            self._session = new_session(self.settings.pool_size, self.provider.url)
            self._session_pid = os.getpid()
        return self._session


def _provider(settings: Settings) -> Provider:
    url = settings.provider_url
    if settings.provider == "demo":
        url = url or settings.demo_url
        if not url:
            raise SettingError(
                "the demo provider needs STOPWIRE_PROVIDER_URL: `flask_stopwire.gunicorn` "
                "starts it for you, or run `python -m flask_stopwire.demo` and set the URL "
                "it prints"
            )
    return make_provider(settings.provider, url, settings.api_key, settings.model)


def _close_if_alive(ref: "weakref.ref[StopwireState]") -> None:
    state = ref()
    if state is not None:
        state.close()

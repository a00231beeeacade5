"""`Stopwire`: the relay, its stop endpoint and the conversations API as a Flask extension."""

import os
from collections.abc import Iterator
from typing import Any

import requests
from flask import Flask

from app import config, telemetry
from app.cancellation import Registry
from app.peers import Peers
from app.providers import make_provider
from app.providers.base import Message
from app.providers.http import new_session
from app.recording import Recorder
from app.routes.api import api
from app.routes.conversations import conversations
from app.routes.openai import openai
from app.store import SqliteStore
from app.streaming import Generation, RelayEvent, RelaySettings


class Stopwire:
    """Mounts the API under `url_prefix` (default `/api`) of any Flask app, and the
    OpenAI-compatible endpoint under `openai_prefix` (default `/v1`; empty: not at all).

    ``Stopwire(app)`` or ``stopwire.init_app(app)``; settings come from `app.config`
    (`STOPWIRE_*`, defaults in app/config.py).
    """

    def __init__(
        self, app: Flask | None = None, url_prefix: str = "/api", openai_prefix: str = "/v1"
    ):
        self.url_prefix = url_prefix
        self.openai_prefix = openai_prefix
        if app is not None:
            self.init_app(app)

    def init_app(self, app: Flask) -> None:
        """Read settings, build the provider and the store, register the blueprints."""
        for name, default in config.DEFAULTS.items():
            app.config.setdefault(name, default)
        cfg = app.config
        self.max_body_bytes = int(cfg["STOPWIRE_MAX_BODY_BYTES"])
        self.client_keys = [
            k.strip() for k in str(cfg["STOPWIRE_CLIENT_KEYS"]).split(",") if k.strip()
        ]
        self.pool_size = int(cfg["STOPWIRE_POOL_SIZE"])
        self.provider = _provider(cfg)
        self.provider_name = str(cfg["STOPWIRE_PROVIDER"])
        self.settings = RelaySettings(
            heartbeat_s=float(cfg["STOPWIRE_HEARTBEAT_S"]),
            connect_timeout_s=float(cfg["STOPWIRE_CONNECT_TIMEOUT_S"]),
            read_timeout_s=float(cfg["STOPWIRE_READ_TIMEOUT_S"]),
            api_key=str(cfg["STOPWIRE_API_KEY"]),
        )
        database = str(cfg["STOPWIRE_DATABASE"]) or os.path.join(
            app.instance_path, "stopwire.sqlite3"
        )
        self.store = SqliteStore(database)
        self.recorder = Recorder(
            self.store, float(cfg["STOPWIRE_FLUSH_S"]), float(cfg["STOPWIRE_LOST_AFTER_S"])
        )
        self.registry = Registry()
        self.peers = Peers(str(cfg["STOPWIRE_RUN_DIR"]), self.registry.stop)
        self._session: requests.Session | None = None
        app.extensions["stopwire"] = self
        app.register_blueprint(conversations, url_prefix=self.url_prefix)
        app.register_blueprint(api, url_prefix=self.url_prefix)
        if self.openai_prefix:
            app.register_blueprint(openai, url_prefix=self.openai_prefix)
        # Beat from the start, so a restarted worker sweeps answers its predecessor lost.
        self.recorder.start()

    def new_generation(
        self,
        messages: list[Message],
        generation_id: str = "",
        options: dict[str, Any] | None = None,
    ) -> Generation:
        """A generation ready to run (nothing starts until its events are iterated)."""
        session = self._provider_session()
        return Generation(
            self.provider,
            messages,
            session,
            self.settings,
            self._ended,
            generation_id,
            options,
        )

    def live_fields(self, generation_id: str) -> dict[str, str]:
        """What a streaming answer records about who writes it."""
        return {
            "generation_id": generation_id,
            "owner": self.recorder.owner,
            "model": self.provider.model,
        }

    def run(
        self, generation: Generation, client_sock: Any, message_id: str = "", prefix: str = ""
    ) -> Iterator[RelayEvent]:
        """The generation's events, stoppable by id (from any worker) while it runs,
        and saved into `message_id` (after `prefix`) when one is given."""
        self.peers.serve()
        self.recorder.start()
        self.registry.add(generation)
        if message_id:
            self.recorder.track(generation, message_id, prefix)
        telemetry.ACTIVE.inc()
        try:
            yield from generation.events(client_sock)
        finally:
            telemetry.ACTIVE.dec()
            self.registry.finish(generation)

    def stop(self, generation_id: str, seen_chars: int | None) -> dict[str, Any] | None:
        """Stop a generation on this worker or a sibling; None when no worker knows it."""
        summary = self.registry.stop(generation_id, seen_chars)
        if summary is None:
            summary = self.peers.stop_elsewhere(generation_id, seen_chars)
        return summary

    def interrupt_all(self) -> int:
        """Close every live generation of this worker upstream (a shutdown); how many."""
        return self.registry.interrupt_all()

    def _ended(self, generation: Generation) -> None:
        telemetry.ended(generation, self.provider_name, self.provider.model)
        self.recorder.finish(generation)

    def _provider_session(self) -> requests.Session:
        # Created on first use, after gunicorn forked and gevent patched the worker.
        if self._session is None:
            self._session = new_session(self.pool_size)
        return self._session


def _provider(cfg: Any):
    name = str(cfg["STOPWIRE_PROVIDER"])
    url = str(cfg["STOPWIRE_PROVIDER_URL"])
    if name == "demo" and not url:
        raise ValueError(
            "the demo provider needs STOPWIRE_PROVIDER_URL: `gunicorn -c gunicorn.conf.py` "
            "starts it for you, or run `python -m app.demo` and set the URL it prints"
        )
    return make_provider(name, url, str(cfg["STOPWIRE_API_KEY"]), str(cfg["STOPWIRE_MODEL"]))

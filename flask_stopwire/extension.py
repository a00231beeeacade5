"""`Stopwire`, the Flask extension: it mounts the API and builds each app's state.

The extension object holds only how it mounts (prefixes); everything built from an
app's settings lives in that app's `app.extensions["stopwire"]` (flask_stopwire/state.py).
One `Stopwire()` can so serve several apps with different providers and databases.
"""

from flask import Flask

from flask_stopwire.settings import Settings
from flask_stopwire.state import EXTENSION_KEY, StopwireState, get_stopwire
from flask_stopwire.web import health, metrics
from flask_stopwire.web.api import api
from flask_stopwire.web.conversations import conversations
from flask_stopwire.web.debug import debug
from flask_stopwire.web.openai import openai


class Stopwire:
    """Mounts Stopwire on a Flask app: ``Stopwire(app)`` or ``Stopwire().init_app(app)``.

    - `url_prefix`: the chat, stop and conversations API (default ``/api``);
    - `openai_prefix`: the OpenAI-compatible endpoint, e.g. ``/v1``; off by default;
    - `metrics_url`, `health_url`: Prometheus metrics and a constant-time health check;
      off by default (a host usually has its own).

    Nothing is mounted outside these prefixes, and the host's error pages, logging and
    metric registry stay its own.
    """

    def __init__(
        self,
        app: Flask | None = None,
        *,
        url_prefix: str = "/api",
        openai_prefix: str | None = None,
        metrics_url: str | None = None,
        health_url: str | None = None,
    ):
        self.url_prefix = url_prefix
        self.openai_prefix = openai_prefix
        self.metrics_url = metrics_url
        self.health_url = health_url
        if app is not None:
            self.init_app(app)

    def init_app(self, app: Flask) -> None:
        """Validate the app's settings, build its state, register the blueprints."""
        if EXTENSION_KEY in app.extensions:
            raise RuntimeError("Stopwire is already initialised on this app")
        state = StopwireState(Settings.load(app.config), app.instance_path)
        app.extensions[EXTENSION_KEY] = state
        app.register_blueprint(conversations, url_prefix=self.url_prefix)
        app.register_blueprint(api, url_prefix=self.url_prefix)
        if state.settings.debug_stats:
            app.register_blueprint(debug, url_prefix=self.url_prefix)
        if self.openai_prefix:
            app.register_blueprint(openai, url_prefix=self.openai_prefix)
        if self.metrics_url:
            app.add_url_rule(self.metrics_url, "stopwire_metrics", metrics.exposition)
        if self.health_url:
            app.add_url_rule(self.health_url, "stopwire_health", health.healthz)

    def close(self, app: Flask | None = None) -> None:
        """Release the resources of `app` (default: the current app)."""
        get_stopwire(app).close()

"""`Stopwire`, the Flask extension: it mounts the API and builds each app's state.

The extension object holds only how it mounts (prefixes); everything built from an
app's settings lives in that app's `app.extensions["stopwire"]` (flask_stopwire/state.py).
One `Stopwire()` can so serve several apps with different providers and databases.
"""

from flask import Flask, request

from flask_stopwire.identity import IdentityHook, ensure_secret_key
from flask_stopwire.limits import MessageLimit, rate_limiter
from flask_stopwire.settings import Settings
from flask_stopwire.state import EXTENSION_KEY, StopwireState, get_stopwire
from flask_stopwire.web import health, metrics, openapi
from flask_stopwire.web.api import api
from flask_stopwire.web.api import stop as stop_view
from flask_stopwire.web.conversations import conversations
from flask_stopwire.web.debug import debug
from flask_stopwire.web.errors import ANY_PATH, AnyPathConverter
from flask_stopwire.web.generations import generations
from flask_stopwire.web.openai import openai
from flask_stopwire.web.websocket import configure as configure_websocket
from flask_stopwire.web.websocket import websocket

STOP_ENDPOINT = f"{api.name}.{stop_view.__name__}"  # never refused by the rate limit


class Stopwire:
    """Mounts Stopwire on a Flask app: ``Stopwire(app)`` or ``Stopwire().init_app(app)``.

    - `url_prefix`: the chat, stop and conversations API (default ``/api``), and the
      WebSocket transport at ``<url_prefix>/ws`` (its flask-sock options go into the app's
      ``SOCK_SERVER_OPTIONS``, where the host did not set them);
    - `openai_prefix`: the OpenAI-compatible endpoint, e.g. ``/v1``; off by default;
    - `metrics_url`, `health_url`: Prometheus metrics and a constant-time health check;
      off by default (a host usually has its own);
    - `identity`: a function returning the current user's stable id from the host's own
      auth, or None for "not allowed" (401); without it each browser gets an anonymous
      identity in a signed cookie (flask_stopwire/identity.py).

    The OpenAPI document of what is mounted is served at ``<url_prefix>/openapi.json``.

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
        identity: IdentityHook | None = None,
    ):
        self.url_prefix = url_prefix
        self.openai_prefix = openai_prefix
        self.metrics_url = metrics_url
        self.health_url = health_url
        self.identity = identity
        if app is not None:
            self.init_app(app)

    def init_app(self, app: Flask) -> None:
        """Validate the app's settings, build its state, register the blueprints."""
        if EXTENSION_KEY in app.extensions:
            raise RuntimeError("Stopwire is already initialised on this app")
        settings = Settings.load(app.config)
        state = StopwireState(settings, app.instance_path, self.identity)
        if self.identity is None:
            ensure_secret_key(app, settings.secret_key)
        app.extensions[EXTENSION_KEY] = state
        app.url_map.converters[ANY_PATH] = AnyPathConverter  # before the blueprints' rules
        app.register_blueprint(conversations, url_prefix=self.url_prefix)
        app.register_blueprint(api, url_prefix=self.url_prefix)
        app.register_blueprint(generations, url_prefix=self.url_prefix)
        app.register_blueprint(websocket, url_prefix=self.url_prefix)  # <url_prefix>/ws
        configure_websocket(app, settings)
        if state.settings.debug_stats:
            app.register_blueprint(debug, url_prefix=self.url_prefix)
        if self.openai_prefix:
            app.register_blueprint(openai, url_prefix=self.openai_prefix)
        if settings.rate_limit:
            limiter = rate_limiter(
                settings.rate_limit,
                state.store,
                lambda: get_stopwire().identity().limit_key,
                [api, generations, conversations, openai, websocket],
                lambda: get_stopwire().metrics.refused.labels("rate").inc(),
                lambda: request.endpoint == STOP_ENDPOINT,  # it ends what costs
            )
            limiter.init_app(app)
            state.message_limit = MessageLimit(limiter, settings.rate_limit)
        if self.metrics_url:
            app.add_url_rule(self.metrics_url, "stopwire_metrics", metrics.exposition)
        if self.health_url:
            app.add_url_rule(self.health_url, "stopwire_health", health.healthz)
        mounts = openapi.Mounts(
            self.url_prefix, self.openai_prefix, self.health_url, self.metrics_url
        )
        app.add_url_rule(
            f"{self.url_prefix.rstrip('/')}/openapi.json", "stopwire_openapi", openapi.view(mounts)
        )

    def close(self, app: Flask | None = None) -> None:
        """Release the resources of `app` (default: the current app)."""
        get_stopwire(app).close()

"""The standalone Stopwire service: the extension, the chat page, metrics and health.

Served from the repository root (`gunicorn -c gunicorn.conf.py 'app:create_app()'`);
never installed, since `app` is the name of so many host projects' own package.
"""

from typing import Any

from flask import Flask

from app.pages import pages
from flask_stopwire import Stopwire

_stopwire = Stopwire(
    url_prefix="/api", openai_prefix="/v1", metrics_url="/metrics", health_url="/healthz"
)


def create_app(test_config: dict[str, Any] | None = None) -> Flask:
    """The service: `STOPWIRE_*` settings from the environment, overridden by `test_config`."""
    app = Flask(__name__, instance_relative_config=True)
    # The identity cookie: signed, HttpOnly (Flask's default), never sent cross-site.
    app.config.update(SESSION_COOKIE_NAME="stopwire", SESSION_COOKIE_SAMESITE="Lax")
    if test_config is not None:
        app.config.from_mapping(test_config)
    _stopwire.init_app(app)
    app.register_blueprint(pages)
    return app

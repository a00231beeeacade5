"""Stopwire: a Flask + gevent chat relay whose Stop button really stops the model."""

from typing import Any

from flask import Flask

from app import config
from app.extension import Stopwire
from app.routes.pages import pages


def create_app(test_config: dict[str, Any] | None = None) -> Flask:
    """The application: defaults, then `STOPWIRE_*` from the environment, then `test_config`."""
    app = Flask(__name__, instance_relative_config=True)
    app.config.from_mapping(config.DEFAULTS)
    app.config.from_mapping(config.from_environ())
    if test_config is not None:
        app.config.from_mapping(test_config)
    Stopwire(app)
    app.register_blueprint(pages)
    return app

"""Stopwire: a Flask + gevent chat relay whose Stop button really stops the model."""

import logging
from typing import Any

from flask import Flask

from app import config
from app.extension import Stopwire
from app.routes.metrics import metrics
from app.routes.pages import pages


def create_app(test_config: dict[str, Any] | None = None) -> Flask:
    """The application: defaults, then `STOPWIRE_*` from the environment, then `test_config`."""
    app = Flask(__name__, instance_relative_config=True)
    _configure_logging()
    app.config.from_mapping(config.DEFAULTS)
    app.config.from_mapping(config.from_environ())
    if test_config is not None:
        app.config.from_mapping(test_config)
    Stopwire(app)
    app.register_blueprint(pages)
    app.register_blueprint(metrics)
    return app


def _configure_logging() -> None:
    """Warnings and errors with context on stderr; the per-generation lines as bare JSON."""
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s %(message)s")
    generations = logging.getLogger("stopwire.generations")
    if not generations.handlers:
        handler = logging.StreamHandler()
        handler.setFormatter(logging.Formatter("%(message)s"))
        generations.addHandler(handler)
        generations.propagate = False

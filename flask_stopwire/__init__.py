"""Flask-Stopwire: a chat relay whose Stop button really stops the model.

    from flask_stopwire import Stopwire
    Stopwire(app, url_prefix="/llm")

Exports load lazily: `flask_stopwire.gunicorn` is imported by gunicorn config files,
and importing requests, gevent or prometheus-client there (before gevent patches the
worker, before the metrics directory exists) would break both.
"""

from importlib import import_module
from typing import TYPE_CHECKING, Any

__all__ = ["SettingError", "Settings", "Stopwire", "StopwireState", "get_stopwire"]

_EXPORTS = {
    "SettingError": "flask_stopwire.settings",
    "Settings": "flask_stopwire.settings",
    "Stopwire": "flask_stopwire.extension",
    "StopwireState": "flask_stopwire.state",
    "get_stopwire": "flask_stopwire.state",
}

if TYPE_CHECKING:
    from flask_stopwire.extension import Stopwire
    from flask_stopwire.settings import SettingError, Settings
    from flask_stopwire.state import StopwireState, get_stopwire


def __getattr__(name: str) -> Any:
    if name not in _EXPORTS:
        raise AttributeError(f"module 'flask_stopwire' has no attribute {name!r}")
    return getattr(import_module(_EXPORTS[name]), name)

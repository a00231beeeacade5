"""A host's own Flask project, whose package is named `app` like so many others."""

from flask import Flask

from app.pages import pages
from flask_stopwire import Stopwire


def create_app() -> Flask:
    """The host's app: its own pages, with Stopwire mounted under /llm."""
    app = Flask(__name__)
    app.register_blueprint(pages)
    Stopwire(app, url_prefix="/llm")  # the OpenAI endpoint stays off: no openai_prefix
    return app

"""The host's WSGI entry point, `wsgi:app`, wrapped in a middleware as hosts often do."""

from werkzeug.middleware.proxy_fix import ProxyFix

from app import create_app

# gunicorn serves the wrapper, not the Flask app: the hooks must find Stopwire anyway.
app = ProxyFix(create_app())

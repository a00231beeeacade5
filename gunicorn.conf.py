"""gunicorn settings for the standalone service: `gunicorn -c gunicorn.conf.py 'app:create_app()'`.

Every setting reads `STOPWIRE_*` first; gunicorn's own flags (-b, -w, ...) override
this file. The hooks come from the extension, as in any host's config file. Nothing
here imports requests or ssl: that would happen before gevent patches the worker
(MonkeyPatchWarning).
"""

import logging.config
import os

from flask_stopwire.gunicorn import *  # noqa: F403  (the hooks; starts the demo model if needed)

wsgi_app = "app:create_app()"
worker_class = "gevent"
bind = os.environ.get("STOPWIRE_BIND") or f"127.0.0.1:{os.environ.get('PORT', '8000')}"
workers = int(os.environ.get("STOPWIRE_WORKERS", "2"))
# Each open stream and each idle keep-alive connection holds one slot.
worker_connections = int(os.environ.get("STOPWIRE_WORKER_CONNECTIONS", "1000"))
timeout = int(os.environ.get("STOPWIRE_TIMEOUT", "30"))
graceful_timeout = int(os.environ.get("STOPWIRE_GRACEFUL_TIMEOUT", "20"))
keepalive = int(os.environ.get("STOPWIRE_KEEPALIVE", "5"))
accesslog = os.environ.get("STOPWIRE_ACCESS_LOG") or None
loglevel = os.environ.get("STOPWIRE_LOG_LEVEL", "info")
# gunicorn 27's control socket has one default path per user: several instances on a
# host (tests, blue/green deploys) would fight over it, and Stopwire does not use it.
control_socket_disable = True

# The service's own logging (a library never configures it): warnings and errors with
# context on stderr, and one bare JSON line per finished generation.
logging.config.dictConfig(
    {
        "version": 1,
        "disable_existing_loggers": False,
        "formatters": {
            "context": {"format": "%(asctime)s %(levelname)s %(name)s %(message)s"},
            "bare": {"format": "%(message)s"},
        },
        "handlers": {
            "stderr": {"class": "logging.StreamHandler", "formatter": "context"},
            "json_lines": {"class": "logging.StreamHandler", "formatter": "bare"},
        },
        "root": {"level": "INFO", "handlers": ["stderr"]},
        "loggers": {
            "flask_stopwire.generations": {"handlers": ["json_lines"], "propagate": False},
        },
    }
)

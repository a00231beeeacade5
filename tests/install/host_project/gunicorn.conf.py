"""The host's own gunicorn settings, with Stopwire's hooks in one line."""

from flask_stopwire.gunicorn import *  # noqa: F403

# Long enough that an interrupt arriving only at the graceful timeout cannot pass the test.
graceful_timeout = 20
# The test pins keep-alive connections to workers; they must outlive the search for both.
keepalive = 10
# gunicorn 25+ has one control socket path per user; this host does not use it.
control_socket_disable = True

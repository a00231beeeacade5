"""Who may read the operator endpoints (`/metrics`, debug stats): not the public.

With `STOPWIRE_METRICS_TOKEN` set, a request needs ``Authorization: Bearer <token>``.
Without it, only a client on this machine that came straight in (a loopback address
and no proxy's `X-Forwarded-For`), so a reverse proxy in front never exposes them.
"""

import hmac
import ipaddress

from flask import abort, request

from flask_stopwire.state import get_stopwire


def require_operator() -> None:
    """404 unless the operator rule above allows this request (no existence oracle)."""
    token = get_stopwire().settings.metrics_token
    if token:
        scheme, _, given = request.headers.get("Authorization", "").partition(" ")
        if scheme.lower() != "bearer" or not hmac.compare_digest(given.encode(), token.encode()):
            abort(404)
        return
    if request.headers.get("X-Forwarded-For") is not None or not _loopback(request.remote_addr):
        abort(404)


def _loopback(address: str | None) -> bool:
    try:
        return address is not None and ipaddress.ip_address(address).is_loopback
    except ValueError:
        return False  # a unix socket bind reports no address: a proxy sits in front

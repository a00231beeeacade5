"""Cost limits per identity: a request rate (Flask-Limiter) and answers running at once.

Both are shared by every worker of a host through the store, so two workers don't each
allow the whole amount: Flask-Limiter counts in `StoreLimits`, a `limits` storage
backed by our database (its thread, never the event loop), and running answers hold a
slot in the store that their worker renews with its heartbeat. A slot whose worker
died is freed once it goes stale.

Limits count the identity's `limit_key`: a client that presented no identity is
counted by its address, so dropping the cookie does not escape them. A WebSocket message
that asks for something (a prompt, a resume) counts as the HTTP request doing the same
would (`MessageLimit`). A stop is never refused nor counted (`exempt`): it ends what costs.
"""

import logging
import math
import time
from collections.abc import Callable
from typing import Any, ClassVar

import limits
from flask import Blueprint
from flask_limiter import Limiter
from limits.storage import Storage

from flask_stopwire.store.sql import SqlStore


class StoreLimits(Storage):
    """Flask-Limiter's fixed-window counters in the Stopwire store (`stopwire://`)."""

    STORAGE_SCHEME: ClassVar[list[str]] = ["stopwire"]

    def __init__(
        self, uri: str | None = None, wrap_exceptions: bool = False, **options: Any
    ) -> None:
        self.store: SqlStore = options.pop("store")
        super().__init__(uri, wrap_exceptions, **options)

    @property
    def base_exceptions(self) -> type[Exception]:
        return Exception  # sqlite3's or psycopg's errors, whichever database is in use

    def incr(self, key: str, expiry: float, amount: int = 1) -> int:
        return self.store.hit(key, expiry, amount)

    def get(self, key: str) -> int:
        return self.store.hits(key)[0]

    def get_expiry(self, key: str) -> float:
        return self.store.hits(key)[1]

    def check(self) -> bool:
        return True

    def reset(self) -> None:
        return None

    def clear(self, key: str) -> None:
        self.store.clear_hits(key)


log = logging.getLogger(__name__)

_KEY_PREFIX = "stopwire"
_SCOPE = "stopwire"  # one count across Stopwire's blueprints


def rate_limiter(
    rate: str,
    store: SqlStore,
    limit_key: Callable[[], str],
    blueprints: list[Blueprint],
    on_refused: Callable[[], None],
    exempt: Callable[[], bool],
) -> Limiter:
    """A Flask-Limiter for Stopwire's own blueprints only (a host's routes stay its own);
    a request for which `exempt()` is true is neither refused nor counted."""
    limiter = Limiter(
        key_func=limit_key,
        storage_uri="stopwire://",
        storage_options={"store": store},
        headers_enabled=True,  # Retry-After on every 429
        swallow_errors=True,  # a failing store lets requests through rather than 500
        key_prefix=_KEY_PREFIX,
        on_breach=lambda _limit: on_refused(),
    )
    shared = limiter.shared_limit(rate, scope=_SCOPE, exempt_when=exempt)
    for blueprint in blueprints:
        shared(blueprint)
    return limiter


class MessageLimit:
    """The HTTP API's rate, taken for a request that is not an HTTP request (a WebSocket
    message): from the very counters Flask-Limiter keeps for the identity (the same key
    prefix, identity and scope), so one socket cannot ask for more than its HTTP share."""

    def __init__(self, limiter: Limiter, rate: str):
        self._limiter = limiter
        self._rates = sorted(limits.parse_many(rate))  # "5/second;100/hour": both hold

    def take(self, limit_key: str) -> int | None:
        """Count one request: None if allowed, else the seconds until it would be.

        As for HTTP (`swallow_errors`), a failing store lets it through.
        """
        args = (_KEY_PREFIX, limit_key, _SCOPE)
        strategy = self._limiter.limiter
        try:
            for rate in self._rates:
                if not strategy.hit(rate, *args):
                    reset_at = strategy.get_window_stats(rate, *args).reset_time
                    return max(1, math.ceil(reset_at - time.time()))
        except Exception:
            log.exception("counting a WebSocket message against the rate limit failed")
        return None

    def __str__(self) -> str:
        return "; ".join(str(rate) for rate in self._rates)

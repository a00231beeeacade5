"""The live service for the fuzzer and raw-socket tests: real gunicorn, a fast demo model."""

import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

# tests/server's conftest imports its helpers (wire.py) as top-level modules, as pytest
# allows when it loads that conftest itself: give it the same path when we import it.
sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "server"))

from tests.server.conftest import ROOT, Server, Upstream

CLIENT_KEY = "fuzzkey"


@pytest.fixture(scope="module")
def fast_upstream() -> Iterator[Upstream]:
    """A demo provider that answers at once, so the fuzzer's many streams end quickly."""
    (ROOT / ".pytest_cache").mkdir(exist_ok=True)
    upstream = Upstream("--tokens", "3", "--gap", "0", "--ttft", "0")
    yield upstream
    upstream.close()


@pytest.fixture(scope="module")
def live(fast_upstream: Upstream) -> Iterator[Server]:
    """gunicorn with two gevent workers, a client key and no cap on running answers.

    Without gunicorn's own limits on the request line (4,094 bytes) and on a header's
    size: gunicorn answers those with an HTML 414 or 400 before the app sees the request,
    and the fuzzer is here for the API (its long query strings come now and then).
    """
    server = Server(
        fast_upstream.url,
        workers=2,
        STOPWIRE_CLIENT_KEYS=f"fuzz:{CLIENT_KEY}",
        STOPWIRE_MAX_ACTIVE_PER_USER="0",
        GUNICORN_CMD_ARGS="--limit-request-line 0 --limit-request-field_size 0",
    )
    yield server
    server.close()


@pytest.fixture
def auth() -> dict[str, str]:
    """The header every request to `live` sends."""
    return {"Authorization": f"Bearer {CLIENT_KEY}"}

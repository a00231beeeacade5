"""The one I/O seam to providers: a pooled session, opening a stream, error mapping."""

import json
import re
from collections.abc import Iterator

import requests
import urllib3.exceptions

from flask_stopwire.providers.base import (
    ProviderCall,
    ProviderDisconnected,
    ProviderHTTPError,
    ProviderTimeout,
    ProviderUnreachable,
)

# Providers sometimes echo (part of) the key in 401 bodies: never pass that on.
_KEY_LIKE = re.compile(r"\b(sk|key|ak)-[A-Za-z0-9_\-*.]{6,}")


def new_session(pool_size: int) -> requests.Session:
    """A session whose pool holds one connection per concurrent stream."""
    session = requests.Session()
    adapter = requests.adapters.HTTPAdapter(pool_connections=4, pool_maxsize=pool_size)
    session.mount("http://", adapter)
    session.mount("https://", adapter)
    return session


def open_stream(
    session: requests.Session,
    call: ProviderCall,
    timeouts: tuple[float, float],
    secret: str = "",
) -> requests.Response:
    """POST the call and return the streaming response, or raise a ProviderError."""
    try:
        response = session.post(
            call.url, json=call.json, headers=call.headers, timeout=timeouts, stream=True
        )
    except requests.Timeout as exc:
        raise ProviderTimeout(f"provider did not answer within {timeouts[0]:g}s") from exc
    except requests.ConnectionError as exc:
        raise ProviderUnreachable(f"cannot reach the provider at {_origin(call.url)}") from exc
    if response.status_code >= 400:
        try:
            message = error_message(response.content, secret)
        finally:
            response.close()
        raise ProviderHTTPError(response.status_code, message)
    return response


def iter_body(response: requests.Response) -> Iterator[bytes]:
    """Body chunks as they arrive, with transport failures mapped to ProviderErrors."""
    try:
        yield from response.iter_content(chunk_size=None)
    except (requests.RequestException, urllib3.exceptions.HTTPError, OSError) as exc:
        # requests wraps an idle read timeout in a ConnectionError: look inside.
        cause = exc.args[0] if exc.args else None
        if isinstance(exc, requests.Timeout) or isinstance(cause, urllib3.exceptions.TimeoutError):
            raise ProviderTimeout("provider went silent past the idle limit") from exc
        raise ProviderDisconnected("provider connection dropped mid-stream") from exc


def error_message(body: bytes, secret: str = "") -> str:
    """The human message inside a provider's error body, with keys redacted."""
    text = body.decode("utf-8", "replace").strip()
    try:
        parsed = json.loads(text)
    except ValueError:
        parsed = None
    if isinstance(parsed, dict) and "error" in parsed:
        error = parsed["error"]
        text = str(error.get("message", error) if isinstance(error, dict) else error)
    # Redact before cutting: a cut secret would no longer match and its start would leak.
    return redact(text, secret)[:500] or "no details given"


def redact(text: str, secret: str) -> str:
    """Remove the configured key and anything shaped like a key."""
    if secret:
        text = text.replace(secret, "[redacted]")
    return _KEY_LIKE.sub("[redacted]", text)


def _origin(url: str) -> str:
    return "/".join(url.split("/")[:3])

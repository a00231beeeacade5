"""The one I/O seam to providers: a pooled session, opening a stream, error mapping."""

import contextlib
import http.client
import json
import os
import re
import socket
import ssl
import time
from collections.abc import Callable, Iterator
from typing import Any

import requests
import urllib3.exceptions
import urllib3.response

from flask_stopwire.providers.base import (
    ProviderCall,
    ProviderDisconnected,
    ProviderHTTPError,
    ProviderTimeout,
    ProviderUnreachable,
)
from flask_stopwire.providers.pool import CheckedPoolsAdapter, kernel_poll

# Providers sometimes echo (part of) the key in 401 bodies: never pass that on.
_KEY_LIKE = re.compile(r"\b(sk|key|ak)-[A-Za-z0-9_\-*.]{6,}")


def new_session(pool_size: int, provider_url: str) -> requests.Session:
    """A session whose pool holds one connection per concurrent stream, each checked
    before reuse without giving up the event loop (providers/pool.py).

    What requests would read from the environment on every request (proxies and
    NO_PROXY for the provider's URL, a CA bundle, .netrc) is read once, here: the provider
    never changes, and that per-request lookup was about a tenth of a burst's CPU.
    """
    session = requests.Session()
    session.proxies.update(requests.utils.get_environ_proxies(provider_url))
    session.verify = (
        os.environ.get("REQUESTS_CA_BUNDLE") or os.environ.get("CURL_CA_BUNDLE") or True
    )
    session.auth = requests.utils.get_netrc_auth(provider_url)
    session.trust_env = False
    adapter = CheckedPoolsAdapter(pool_connections=4, pool_maxsize=pool_size)
    session.mount("http://", adapter)
    session.mount("https://", adapter)
    return session


def open_stream(
    session: requests.Session,
    call: ProviderCall,
    timeouts: tuple[float, float],
    secret: str = "",
) -> requests.Response:
    """POST the call and return the streaming response, or raise a ProviderError.

    A prepared request (requests' own recipe for it) over the session's settings as they
    are: `Session.post` would merge them into new objects on every call (cookie jars,
    header dicts, proxies, each checked against typing protocols), about a sixth of the
    call's CPU, for settings that never change (`new_session`).
    """
    # `requests.sessions.merge_setting`'s result, without its protocol checks: the call's
    # headers over the session's, and none set to None.
    headers = requests.structures.CaseInsensitiveDict(session.headers)
    headers.update(call.headers)
    for name in [name for name, value in headers.items() if value is None]:
        del headers[name]
    request = requests.PreparedRequest()
    request.prepare(
        method="POST",
        url=call.url,
        headers=headers,
        json=call.json,
        params=session.params or None,  # {}: two runtime Protocol checks in requests, per call
        auth=session.auth,
        cookies=session.cookies,
        hooks=session.hooks,
    )
    try:
        response = session.send(request, stream=True, timeout=timeouts, proxies=session.proxies)
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
    """Body bytes as they arrive, with transport failures mapped to ProviderErrors.

    A chunked body without content coding (every streaming provider's) is read by
    `_dechunked`: whatever one socket read returns, unframed in one go. Anything else
    goes through urllib3, which reads one HTTP chunk per call and three buffered reads
    per chunk: per token, on a busy worker, that is the relay's largest cost.
    """
    source = _http_client_response(response)
    if source is None:
        return _mapped(response.iter_content(chunk_size=None))
    return _mapped(_dechunked(source, source.fp.read1, response.raw.release_conn))


class SocketBody:
    """A plain chunked body read without ever blocking: `pieces` yields None when no
    byte is ready, and its reader waits for `sock` to be readable (then sets `waiting` False).

    The event loop's own wait replaces gevent's per-read one (a failed `recv` and a
    `Timeout` for every token). The idle limit is then the reader's to keep:
    `last_data_at` says when bytes last came. TLS works the same way: its socket only
    hands out whole records, and `pending()` says if a record was read only in part.

    A read that emptied the socket asks the kernel's poll once more before it waits, and
    reads on if more came, `_MORE_AT_ONCE` reads a wake at most (one stream's provider
    must not keep the loop from the others). Left to the loop's next turn, each of these
    waited a turn more, and on a busy worker turns are long:
    - a provider with Nagle's algorithm on (no TCP_NODELAY) holds a token written while
      the one before was unacknowledged. Our end acknowledges with the read that empties
      the socket (it left Linux's interactive mode at the headers: `_acknowledge_now`),
      and from a provider on this host the token that ACK releases usually arrives before
      the `recv` returns. Tokens of a saturated burst waited 30 ms at p50 where the plain
      relay's, which tries its socket again, waited 9 (docs/token-path-profile.md,
      sixteenth session);
    - a TLS socket hands out one record a read, and the records queued behind it.

    It acknowledges the headers at once (`_acknowledge_now`).
    """

    def __init__(self, response: requests.Response, source: http.client.HTTPResponse):
        self.sock: socket.socket = response.raw.connection.sock
        self.last_data_at = time.monotonic()
        self._fp = source.fp
        # TLS: the bytes of a record already decrypted (looked up once: a missing attribute
        # of a gevent socket costs an exception per read).
        self._pending: Callable[[], int] | None = getattr(self.sock, "pending", None)
        self._buffered = True  # http.client may have read the first bytes with the headers
        # Nothing to read until the socket is readable: the pieces would only say None. Its
        # reader sets it back once the socket is: an attribute, asked and set every token.
        self.waiting = False
        self._timeout = self.sock.gettimeout()
        self.sock.settimeout(0.0)
        self._poll = kernel_poll(self.sock)
        self._more_taken = 0  # reads this wake took because the poll said more came
        _acknowledge_now(self.sock)  # the headers, and any body bytes read with them
        self._release_conn = response.raw.release_conn
        self.pieces: Iterator[bytes | None] = _dechunked(source, self._read, self._release)

    def _read(self, size: int) -> bytes | None:
        if self.waiting:
            return None
        try:
            data = self._fp.read1(size) if self._buffered else b""  # what http.client holds
            if not data:
                self._buffered = False
                data = self.sock.recv(size)
                if len(data) < size and not (self._pending and self._pending()):
                    self._emptied()  # no TLS record read in part
        except (BlockingIOError, ssl.SSLWantReadError):
            self._buffered = False  # raised only once the buffer is empty
            self._wait_for_socket()
            return None
        except OSError as exc:  # a reset, a TLS failure: what `_mapped` makes of them
            raise ProviderDisconnected("provider connection dropped mid-stream") from exc
        self.last_data_at = time.monotonic()
        return data

    def _emptied(self) -> None:
        """The socket was read empty: wait for it before the next read, unless more came
        meanwhile and this wake has not taken its share (see the class)."""
        if self._more_taken < _MORE_AT_ONCE and self._poll(0):
            self._more_taken += 1
        else:
            self._wait_for_socket()

    def _wait_for_socket(self) -> None:
        """No read until the loop says the socket is readable; that wake starts a new share."""
        self.waiting = True
        self._more_taken = 0

    def _release(self) -> None:
        """Read to its end: its timeout back, the connection goes back to the pool."""
        self.sock.settimeout(self._timeout)
        self._release_conn()


def socket_body(response: requests.Response) -> SocketBody | None:
    """A `SocketBody` for a plain chunked body on a socket the event loop can watch."""
    source = _http_client_response(response)
    connection = getattr(response.raw, "connection", None)
    sock = getattr(connection, "sock", None)
    if source is None or not isinstance(sock, socket.socket):
        return None
    return SocketBody(response, source)


def _acknowledge_now(sock: socket.socket) -> None:
    """Have our end of `sock`, if TCP, acknowledge what it received, now (Linux).

    A provider that leaves Nagle's algorithm on (no TCP_NODELAY: Python's and gevent's
    own servers, llama.cpp's) holds each small write until the one before is
    acknowledged. When a pooled connection carries a request within the delayed-ACK
    timeout (40 ms at least) of its previous answer, Linux takes the exchange for an
    interactive one and delays our ACKs, so the answer's first tokens waited for the ACK
    of its headers: 15-38 ms on loopback (docs/token-path-profile.md). TCP_QUICKACK sends
    that ACK and ends the mode; from then on each read that empties the socket
    acknowledges by itself.
    """
    if _QUICKACK is None:
        return
    with contextlib.suppress(OSError):  # not TCP, or a TCP without the option: as it was
        sock.setsockopt(socket.IPPROTO_TCP, _QUICKACK, 1)


def _mapped(pieces: Iterator[Any]) -> Iterator[Any]:
    """The pieces, with transport failures mapped to ProviderErrors."""
    try:
        yield from pieces
    except TimeoutError as exc:
        raise ProviderTimeout("provider went silent past the idle limit") from exc
    except (requests.RequestException, urllib3.exceptions.HTTPError, OSError) as exc:
        # requests wraps an idle read timeout in a ConnectionError: look inside.
        cause = exc.args[0] if exc.args else None
        if isinstance(exc, requests.Timeout) or isinstance(cause, urllib3.exceptions.TimeoutError):
            raise ProviderTimeout("provider went silent past the idle limit") from exc
        raise ProviderDisconnected("provider connection dropped mid-stream") from exc


_QUICKACK: int | None = getattr(socket, "TCP_QUICKACK", None)  # Linux only
_MAX_LINE = 4096  # a chunk-size line or trailer longer than this is not HTTP
_HEX_DIGITS = b"0123456789abcdefABCDEF"
_READ_SIZE = 65536
_MORE_AT_ONCE = 4  # reads a wake takes on the poll's word before the loop's next turn


def _http_client_response(response: requests.Response) -> Any:
    """The http.client response under a chunked, uncoded urllib3 body nobody read yet."""
    raw = response.raw
    source = getattr(raw, "_fp", None)
    if not (
        isinstance(raw, urllib3.response.HTTPResponse)
        and isinstance(source, http.client.HTTPResponse)
        and raw.chunked
        and source.chunked
        and source.chunk_left is None  # not a byte of the body read yet
        and source.fp is not None
        and response.headers.get("Content-Encoding", "identity").lower() == "identity"
    ):
        return None
    return source


def _dechunked(
    source: http.client.HTTPResponse,
    read: Callable[[int], bytes | None],
    release: Callable[[], None],
) -> Iterator[bytes | None]:
    """The payload of a chunked body, one piece per read; ends at the last chunk.

    `read(size)` returns bytes, b"" at the end of the connection, or None when nothing
    is ready (passed on as None). At the end the http.client response is closed as
    its own reader would close it, and `release()` hands the connection back to the pool.
    """
    buffer = b""
    left = 0  # payload bytes still to come in the current chunk
    while True:
        data = read(_READ_SIZE)
        if data is None:
            yield None
            continue
        if not data:
            raise ProviderDisconnected("provider connection dropped mid-stream")
        if left >= len(data):
            left -= len(data)
            yield data
            continue
        if left:
            yield data[:left]
            data = data[left:]
            left = 0
        elif not buffer:  # this read starts a chunk, and nothing is held from before
            payload = _whole_chunk(data)
            if payload is not None:  # the usual read: one event, one chunk
                yield payload
                continue
        buffer += data
        pieces = []
        while True:
            # The CRLF that ends the previous chunk's payload, then the size line.
            if buffer.startswith(b"\r\n"):
                buffer = buffer[2:]
            end = buffer.find(b"\r\n")
            if end < 0:
                if len(buffer) > _MAX_LINE:
                    raise ProviderDisconnected("provider sent a malformed chunked body")
                break
            size = _chunk_size(buffer[:end].split(b";", 1)[0].strip())
            if size is None:
                raise ProviderDisconnected("provider sent a malformed chunked body")
            if size == 0:
                if pieces:
                    yield b"".join(pieces)
                yield from _trailers(read, buffer[end + 2 :])
                source._close_conn()
                release()
                return
            payload = buffer[end + 2 : end + 2 + size]
            pieces.append(payload)
            buffer = buffer[end + 2 + size :]
            if len(payload) < size:
                left = size - len(payload)
                break
        if pieces:
            yield b"".join(pieces)


def _whole_chunk(data: bytes) -> bytes | None:
    """The payload if `data` is exactly one chunk with a bare size line: the usual read,
    one event, taken with one slice where the loop copies, searches and joins (every
    token pays this). None for anything else, which the loop reads and judges."""
    end = data.find(b"\r\n")
    if end < 0 or not data.endswith(b"\r\n"):
        return None
    size = _chunk_size(data[:end])
    if not size or len(data) != end + 4 + size:  # size 0: the last chunk
        return None
    return data[end + 2 : -2]


def _chunk_size(field: bytes) -> int | None:
    """A chunk's size from its size line's number, or None unless 1 to 16 hex digits:
    int() would also take "-4", "+4" or "4_0". (Not a regular expression: every read pays
    this, and a match costs several times more.)"""
    if not 0 < len(field) <= 16 or field.strip(_HEX_DIGITS):
        return None
    return int(field, 16)


def _trailers(read: Callable[[int], bytes | None], buffer: bytes) -> Iterator[None]:
    """Read up to the blank line that ends the trailers (usually there already)."""
    while b"\r\n\r\n" not in b"\r\n" + buffer:
        if len(buffer) > _MAX_LINE:
            raise ProviderDisconnected("provider sent a malformed chunked body")
        data = read(_MAX_LINE)
        if data is None:
            yield None
            continue
        if not data:
            raise ProviderDisconnected("provider connection dropped mid-stream")
        buffer += data


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

"""The chunked-body reader of providers/http.py: bytes in, payload out, however split."""

import random

import pytest

from flask_stopwire.providers.base import ProviderDisconnected
from flask_stopwire.providers.http import _dechunked

PAYLOADS = [b"data: one\n\n", b"data: tw", b"o\n\n", b"x" * 300, b"data: [DONE]\n\n"]


def chunked(payloads: list[bytes], trailers: bytes = b"") -> bytes:
    """A chunked body: one chunk per payload (one with an extension), then the last chunk."""
    body = b""
    for i, payload in enumerate(payloads):
        extension = b";name=value" if i == 1 else b""
        body += b"%x%s\r\n%s\r\n" % (len(payload), extension, payload)
    return body + b"0\r\n" + trailers + b"\r\n"


class Reader:
    """http.client's buffered reader, as `_dechunked` uses it: `read1` hands out pieces."""

    def __init__(self, pieces: list[bytes]):
        self.pieces = [piece for piece in pieces if piece]  # b"" would be the end of the body

    def read1(self, n: int) -> bytes:
        return self.pieces.pop(0)[:n] if self.pieces else b""


class Source:
    """The http.client response: its reader, closed as http.client closes it at the end."""

    def __init__(self, pieces: list[bytes]):
        self.fp: Reader | None = Reader(pieces)
        self.closed = self.released = False

    def _close_conn(self) -> None:
        self.fp, self.closed = None, True

    def release(self) -> None:
        """What urllib3's `release_conn` does: the connection goes back to the pool."""
        assert self.closed, "released before http.client's response was closed"
        self.released = True


def read(pieces: list[bytes]) -> tuple[bytes, Source]:
    source = Source(pieces)
    return b"".join(_dechunked(source, source.fp.read1, source.release)), source  # type: ignore[arg-type]


def test_payload_of_a_body_in_one_piece():
    payload, source = read([chunked(PAYLOADS)])
    assert payload == b"".join(PAYLOADS)
    assert source.closed and source.released  # the connection went back to the pool


def test_payload_however_the_body_is_split():
    body = chunked(PAYLOADS, b"X-Trailer: 1\r\n")
    rng = random.Random(14)
    for cut in range(len(body) + 1):
        assert read([body[:cut], body[cut:]])[0] == b"".join(PAYLOADS), cut
    for _ in range(300):
        cuts = sorted(rng.sample(range(1, len(body)), rng.randint(1, 12)))
        pieces = [body[a:b] for a, b in zip([0, *cuts], [*cuts, len(body)], strict=True)]
        payload, source = read(pieces)
        assert payload == b"".join(PAYLOADS) and source.closed, pieces


def test_nothing_is_read_past_the_end_of_the_body():
    source = Source([chunked([b"hi"]), b"next response"])
    assert b"".join(_dechunked(source, source.fp.read1, source.release)) == b"hi"  # type: ignore[arg-type]
    assert source.closed


def test_a_body_cut_short_is_a_disconnect():
    body = chunked(PAYLOADS)
    for cut in (0, 5, len(body) // 2, len(body) - 1):
        with pytest.raises(ProviderDisconnected):
            read([body[:cut]])


@pytest.mark.parametrize("size", [b"zz", b"-4", b"+4", b"4_0", b"", b"1" * 17])
def test_a_malformed_size_line_is_a_disconnect(size):
    with pytest.raises(ProviderDisconnected):
        read([size + b"\r\nhello\r\n0\r\n\r\n"])


def test_a_long_line_is_a_disconnect():
    with pytest.raises(ProviderDisconnected):
        read([b"1" * 5000])


def test_nothing_ready_is_passed_on_and_the_payload_still_whole():
    """A reader that says "nothing yet" (None) between pieces: each None comes out as a
    None, and the payload is the same however the body is split around them."""
    body = chunked(PAYLOADS, b"X-Trailer: 1\r\n")
    rng = random.Random(13)
    for _ in range(200):
        cuts = sorted(rng.sample(range(1, len(body)), rng.randint(1, 12)))
        pieces = [body[a:b] for a, b in zip([0, *cuts], [*cuts, len(body)], strict=True)]
        script: list[bytes | None] = []
        for piece in pieces:
            script += [None] * rng.randint(0, 2) + [piece]
        source = Source([])
        reads = iter(script)
        out = list(_dechunked(source, lambda _size, reads=reads: next(reads, b""), source.release))  # type: ignore[arg-type]
        assert b"".join(p for p in out if p is not None) == b"".join(PAYLOADS), pieces
        assert out.count(None) == script.count(None) and source.closed


def test_reads_of_one_whole_chunk_each_are_read_as_the_loop_reads_them():
    """The usual read, one chunk (one event), has a shortcut when its size line is bare
    hex (the first three forms); the others go to the loop. Either way each such read
    gives its payload, and the end of the body is read as before."""
    payload = b"data: one\n\n"  # 0xb bytes
    sizes = [b"b", b"B", b"000b", b"b;name=value", b"b ", b" b"]
    source = Source([])
    reads = iter([b"%s\r\n%s\r\n" % (size, payload) for size in sizes] + [b"0\r\n\r\n"])
    out = list(_dechunked(source, lambda _size: next(reads, b""), source.release))  # type: ignore[arg-type]
    assert out == [payload] * len(sizes)
    assert source.closed and source.released


@pytest.mark.parametrize(
    "piece",
    [
        *(size + b"\r\nhello\r\n" for size in [b"zz", b"-5", b"+5", b"5_0", b"", b"1" * 17]),
        b"5\r\nhelloXY",  # no CRLF after the payload
        b"4\r\nhello\r\n",  # a size that is not the payload's
    ],
)
def test_a_malformed_chunk_read_whole_is_a_disconnect(piece):
    with pytest.raises(ProviderDisconnected):
        read([piece, b"0\r\n\r\n"])

"""Server-sent event frames: encoding ours, reading providers'; pure, no Flask and no I/O.

Two readers of providers' streams: `events()` (sseclient-py: every field, for the
protocols that name their events) and `event_data()`, which keeps only each event's
data: an OpenAI-compatible stream is nothing else, and it reads every token.
"""

import codecs
import json
from collections.abc import Generator, Iterable, Iterator
from typing import Any

import orjson
from sseclient import Event, SSEClient

KEEPALIVE = b": keepalive\n\n"
END_ID = "end"  # the id of `done`: a viewer that comes back after it gets 204


# One encoder for every frame: `json.dumps` with options builds a new one per call.
_JSON = json.JSONEncoder(ensure_ascii=False, separators=(",", ":"))
compact_json = _JSON.encode


def frame(event: str, data: Any, event_id: int | str | None = None) -> bytes:
    """Encode one SSE frame whose data is `data` as compact JSON.

    JSON never contains a raw newline, so one `data:` line always suffices.
    """
    head = f"event: {event}" if event_id is None else f"id: {event_id}\nevent: {event}"
    # A provider can send a lone surrogate (`"\\ud83d"`); it must not break the stream.
    return f"{head}\ndata: {compact_json(data)}\n\n".encode("utf-8", "replace")


def json_string(text: str) -> bytes:
    """`text` as a JSON string in UTF-8, the bytes `frame` writes for it: every token pays
    this. orjson writes the same bytes for every character but a lone surrogate, which it
    refuses; the standard library writes that one, and UTF-8 replaces it as in `frame`."""
    try:
        return orjson.dumps(text)
    except orjson.JSONEncodeError:
        return compact_json(text).encode("utf-8", "replace")


def token_frame(text: str, event_id: int) -> bytes:
    """`frame("token", {"text": text}, event_id)`, without building the dict."""
    return b'id: %d\nevent: token\ndata: {"text":%b}\n\n' % (event_id, json_string(text))


def encode(
    relay_events: Generator[Any, None, None], retry_ms: int | None = None
) -> Iterator[bytes]:
    """Stopwire's own wire format for relay events.

    Every event's id is the number of characters of the answer sent once it is
    (`done`'s is END_ID), which a returning viewer sends back as `Last-Event-ID`.
    With `retry_ms` (for `EventSource`): a reconnection delay first, and heartbeats
    as named events, since comments never reach JavaScript.
    """
    named_heartbeats = retry_ms is not None
    try:
        if named_heartbeats:
            yield f"retry: {retry_ms}\n\n".encode()
        for event in relay_events:
            if event.kind == "token":
                yield token_frame(event.data, event.at)
            elif event.kind == "keepalive":
                yield frame("heartbeat", {}, event.at) if named_heartbeats else KEEPALIVE
            elif event.kind == "error":
                yield frame("error", {"error": event.data}, event.at)
            elif event.kind == "done":
                yield frame("done", event.data, END_ID)
            else:
                yield frame(event.kind, event.data, event.at)
    finally:
        relay_events.close()  # a `for` loop would leave the relay's cleanup to the GC


class _BodyEnded(Exception):
    pass


def events(chunks: Iterable[bytes]) -> Iterator[Event]:
    """The events in body chunks, however they are split, as the SSE spec reads them.

    Invalid UTF-8 becomes U+FFFD, and an event the body ends in the middle of is
    dropped: the stream was cut, which is a disconnect and not a malformed event.
    """
    decoder = codecs.getincrementaldecoder("utf-8")(errors="replace")

    def body() -> Iterator[bytes]:
        for chunk in chunks:
            yield decoder.decode(chunk).encode()
        # Raised, not returned: at the end SSEClient would dispatch the unfinished event.
        raise _BodyEnded

    try:
        yield from SSEClient(body()).events()
    except _BodyEnded:
        return


def event_data(chunks: Iterable[bytes | None]) -> Iterator[str | None]:
    """The data of each event in body chunks, however they are split: what `events()`
    gives as `event.data`, for streams whose events are told apart by their data alone.
    A None chunk (nothing ready yet: see providers/http.py `SocketBody`) is passed on.

    Read as `events()` reads: lines end in CRLF, LF or CR; comments and the other
    fields are skipped; an event without data is not dispatched; an event the body
    ends in the middle of is dropped; invalid UTF-8 becomes U+FFFD. It works on bytes
    (no line-ending byte occurs inside a UTF-8 character) and splits a whole chunk at
    once, where `events()` decodes and re-encodes each chunk and matches each line. The
    usual chunk, one event of one `data: ` line, is not split at all (`_one_data_line`).
    """
    rest = b""  # an unfinished line; a CR at its end may be the first half of a CRLF
    data: list[bytes] = []
    for chunk in chunks:
        if chunk is None:
            yield None
            continue
        if not (rest or data) and _one_data_line(chunk):  # the usual chunk: one token's event
            yield chunk[6:-2].decode("utf-8", "replace")
            continue
        if rest:
            chunk = rest + chunk
        held = b""
        if b"\r" in chunk:
            if chunk.endswith(b"\r"):
                chunk, held = chunk[:-1], b"\r"
            chunk = chunk.replace(b"\r\n", b"\n").replace(b"\r", b"\n")
        lines = chunk.split(b"\n")
        rest = lines.pop() + held
        for line in lines:
            if not line:
                if data:
                    yield b"\n".join(data).decode("utf-8", "replace")
                    data = []
            elif line.startswith(b"data"):
                value = line[4:]
                if not value:
                    data.append(b"")
                elif value[:1] == b":":
                    data.append(value[2:] if value[1:2] == b" " else value[1:])
                # else a field whose name only starts with "data": ignored


def _one_data_line(chunk: bytes) -> bool:
    """True if `chunk` is one whole event of one `data: ` line, ended by LF LF: its data
    is then `chunk[6:-2]`, read without splitting it into lines."""
    return (
        chunk.startswith(b"data: ")
        and chunk.find(b"\n") == len(chunk) - 2
        and chunk.endswith(b"\n")
        and b"\r" not in chunk
    )

"""Server-sent event frames: encoding ours, reading providers'; pure, no Flask and no I/O."""

import codecs
import json
from collections.abc import Generator, Iterable, Iterator
from typing import Any

from sseclient import Event, SSEClient

KEEPALIVE = b": keepalive\n\n"


def frame(event: str, data: Any, event_id: int | None = None) -> bytes:
    """Encode one SSE frame whose data is `data` as compact JSON.

    JSON never contains a raw newline, so one `data:` line always suffices.
    """
    lines = []
    if event_id is not None:
        lines.append(f"id: {event_id}")
    lines.append(f"event: {event}")
    lines.append("data: " + json.dumps(data, ensure_ascii=False, separators=(",", ":")))
    # A provider can send a lone surrogate (`"\\ud83d"`); it must not break the stream.
    return ("\n".join(lines) + "\n\n").encode("utf-8", "replace")


def encode(relay_events: Generator[Any, None, None]) -> Iterator[bytes]:
    """Stopwire's own wire format for relay events; token ids count the token frames."""
    sequence = 0
    try:
        for event in relay_events:
            if event.kind == "keepalive":
                yield KEEPALIVE
            elif event.kind == "token":
                sequence += 1
                yield frame("token", {"text": event.data}, event_id=sequence)
            elif event.kind == "error":
                yield frame("error", {"error": event.data})
            else:
                yield frame(event.kind, event.data)
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

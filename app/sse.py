"""Server-sent event frames: pure encoding, no Flask and no I/O."""

import json
from typing import Any

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
    return ("\n".join(lines) + "\n\n").encode()

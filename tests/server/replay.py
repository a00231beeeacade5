"""A provider stand-in that replays recorded Anthropic and Ollama streams and keeps
every request it was sent, so the relay can be tested against their protocols."""

import json
import threading
from collections.abc import Callable
from email.message import Message
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

# A queued answer: status, content type, and the body or what makes it from the headers.
Answer = tuple[int, str, bytes | Callable[[Message], bytes]]


def anthropic_stream(*texts: str, error: str = "") -> bytes:
    """A Messages API stream as Anthropic sends it, optionally failing after the texts."""
    events = [
        (
            "message_start",
            {
                "type": "message_start",
                "message": {"id": "msg_1", "usage": {"input_tokens": 11, "output_tokens": 1}},
            },
        ),
        (
            "content_block_start",
            {
                "type": "content_block_start",
                "index": 0,
                "content_block": {"type": "text", "text": ""},
            },
        ),
        ("ping", {"type": "ping"}),
        *[
            (
                "content_block_delta",
                {
                    "type": "content_block_delta",
                    "index": 0,
                    "delta": {"type": "text_delta", "text": t},
                },
            )
            for t in texts
        ],
    ]
    if error:
        events.append(
            ("error", {"type": "error", "error": {"type": "overloaded_error", "message": error}})
        )
    else:
        events += [
            ("content_block_stop", {"type": "content_block_stop", "index": 0}),
            (
                "message_delta",
                {
                    "type": "message_delta",
                    "delta": {"stop_reason": "end_turn"},
                    "usage": {"output_tokens": len(texts)},
                },
            ),
            ("message_stop", {"type": "message_stop"}),
        ]
    return b"".join(
        f"event: {name}\ndata: {json.dumps(data)}\n\n".encode() for name, data in events
    )


def ollama_stream(*texts: str) -> bytes:
    """An /api/chat NDJSON stream as Ollama sends it."""
    lines = [
        {"model": "llama3.2", "message": {"role": "assistant", "content": t}, "done": False}
        for t in texts
    ]
    lines.append(
        {
            "model": "llama3.2",
            "message": {"role": "assistant", "content": ""},
            "done": True,
            "done_reason": "stop",
            "prompt_eval_count": 7,
            "eval_count": len(texts),
        }
    )
    return b"".join(json.dumps(line).encode() + b"\n" for line in lines)


def key_echo(headers: Message) -> bytes:
    """A 401 body quoting the key the request carried, as some providers do."""
    key = headers.get("x-api-key") or headers.get("Authorization", "").removeprefix("Bearer ")
    error = {"type": "authentication_error", "message": f"invalid x-api-key: {key}"}
    return json.dumps({"type": "error", "error": error}).encode()


class Replay:
    """Answers each POST with the next queued body; `requests` keeps what was asked."""

    def __init__(self):
        self.requests: list[dict] = []
        self.answers: list[Answer] = []
        replay = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def do_POST(self):  # the stdlib names it so
                body = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
                replay.requests.append(
                    {"path": self.path, "headers": dict(self.headers), "body": body}
                )
                status, content_type, payload = replay.answers.pop(0)
                if callable(payload):
                    payload = payload(self.headers)
                self.send_response(status)
                self.send_header("Content-Type", content_type)
                self.send_header("Content-Length", str(len(payload)))
                self.end_headers()
                self.wfile.write(payload)

            def log_message(self, *args):
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}"
        threading.Thread(target=self.server.serve_forever, daemon=True).start()

    def queue(self, content_type: str, payload: bytes) -> None:
        """Answer the next request 200 with this body."""
        self.answers.append((200, content_type, payload))

    def queue_key_echo(self) -> None:
        """Answer the next request 401, quoting back the key it was sent."""
        self.answers.append((401, "application/json", key_echo))

    def close(self) -> None:
        self.server.shutdown()
        self.server.server_close()

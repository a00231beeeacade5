"""Stop latency per transport, and resume exactness over forced cuts (issue #13).

    .venv/bin/python -m bench.transports [--trials N] [--cuts N]

One Stopwire (`gunicorn -c gunicorn.conf.py`, one gevent worker) in front of the demo
provider. For each way a client stops an answer, at 20 ms/token and during a 10 s
provider silence:

- fetch abort: `POST /api/chat`, the socket closed (what aborting a fetch does);
- `es.close()`: `POST /api/generations`, `GET events_url`, the socket closed (what
  EventSource's close does: it has no other way to tell the server);
- WebSocket cancel: `{"type": "cancel", "generation_id"}` on an open socket;
- WebSocket close: the socket closed with a close frame.

Stop latency = the provider's `client_closed_at` minus the client's `time.monotonic()`
just before it acted (one clock, one host). Then `--cuts` forced cuts: one answer with
a resume grace, its connection cut (RST) every few tokens and resumed with
`Last-Event-ID`; the text received must equal the saved answer, character for character.
Prints markdown tables and writes JSON to bench/results/.
"""

import argparse
import json
import platform
import socket
import time
from collections.abc import Callable
from datetime import UTC, datetime
from pathlib import Path
from urllib.parse import urlsplit

import requests
from wsproto import ConnectionType, WSConnection
from wsproto.events import (
    AcceptConnection,
    CloseConnection,
    Ping,
    RejectConnection,
    Request,
    TextMessage,
)

from bench import servers
from bench.client import BENCH_KEY, Stream
from bench.stop_latency import Sample, new_marker, percentile, sample, wait_ended

PACED = "[demo ttft=0.02 tokens=400 gap=0.02]"
SILENT = "[demo ttft=0.02 tokens=50 gap=0.01 silence=3:10]"
AUTH = {"Authorization": f"Bearer {BENCH_KEY}"}
GOAL_P99_MS = 2.0


def fetch_abort(url: str, content: str, silent: bool) -> float:
    stream = Stream(url, "/api/chat", {"content": content})
    stream.read_frames(3, lambda f: b"event: token" in f)
    if silent:
        time.sleep(0.2)
    return stream.close("fin")


def eventsource_close(url: str, content: str, silent: bool) -> float:
    created = requests.post(
        f"{url}/api/generations", json={"content": content}, headers=AUTH, timeout=10
    ).json()
    stream = Stream(url, created["events_url"], None)
    stream.read_frames(3, lambda f: b"event: token" in f)
    if silent:
        time.sleep(0.2)
    return stream.close("fin")


class WebSocket:
    """A WebSocket client in this thread alone (wsproto over a plain socket): no reader
    thread whose turn at the GIL would delay the moment a stop is sent."""

    def __init__(self, url: str):
        parts = urlsplit(url)
        self.sock = socket.create_connection((parts.hostname, parts.port), timeout=30)
        self.conn = WSConnection(ConnectionType.CLIENT)
        auth = [(b"authorization", AUTH["Authorization"].encode())]
        self.sock.sendall(
            self.conn.send(Request(host=parts.netloc, target="/api/ws", extra_headers=auth))
        )
        self.inbox: list[dict] = []
        self.parts: list[str] = []
        while not self._read():  # the handshake's answer
            pass

    def send(self, message: dict) -> float:
        """Send one message; returns the moment just before its bytes left (framed first,
        so the client's own framing is not counted as the server's time)."""
        frame = self.conn.send(TextMessage(data=json.dumps(message)))
        at = time.monotonic()
        self.sock.sendall(frame)
        return at

    def receive(self) -> dict:
        while not self.inbox:
            self._read()
        return self.inbox.pop(0)

    def close(self) -> float:
        """Send a close frame (as a closed tab does); returns the moment just before."""
        frame = self.conn.send(CloseConnection(code=1000))
        at = time.monotonic()
        self.sock.sendall(frame)
        return at

    def _read(self) -> bool:
        self.conn.receive_data(self.sock.recv(65536) or None)
        accepted = False
        for event in self.conn.events():
            if isinstance(event, AcceptConnection):
                accepted = True
            elif isinstance(event, TextMessage):
                self.parts.append(event.data)
                if event.message_finished:
                    self.inbox.append(json.loads("".join(self.parts)))
                    self.parts = []
            elif isinstance(event, Ping):
                self.sock.sendall(self.conn.send(event.response()))
            elif isinstance(event, RejectConnection):
                raise RuntimeError(f"the handshake was refused: {event.status_code}")
        return accepted


def websocket(url: str, content: str) -> tuple[WebSocket, str]:
    ws = WebSocket(url)
    ws.send({"type": "prompt", "content": content})
    generation_id, tokens = "", 0
    while tokens < 3:
        message = ws.receive()
        if message["type"] == "meta":
            generation_id = message["generation_id"]
        tokens += message["type"] == "token"
    return ws, generation_id


def websocket_cancel(url: str, content: str, silent: bool) -> float:
    ws, generation_id = websocket(url, content)
    if silent:
        time.sleep(0.2)
    at = ws.send({"type": "cancel", "generation_id": generation_id})
    while ws.receive()["type"] != "done":
        pass
    ws.close()
    ws.sock.close()
    return at


def websocket_close(url: str, content: str, silent: bool) -> float:
    ws, _ = websocket(url, content)
    if silent:
        time.sleep(0.2)
    at = ws.close()
    ws.sock.close()
    return at


TRANSPORTS: dict[str, Callable[[str, str, bool], float]] = {
    "fetch abort": fetch_abort,
    "es.close()": eventsource_close,
    "WebSocket cancel": websocket_cancel,
    "WebSocket close": websocket_close,
}


def stop_trials(
    url: str, demo: servers.Demo, how: Callable[[str, str, bool], float], silent: bool, trials: int
) -> list[Sample]:
    samples = []
    for _ in range(trials):
        demo.clear()
        marker = new_marker()
        acted_at = how(url, f"{marker} {SILENT if silent else PACED}", silent)
        record = wait_ended(demo, {marker}, timeout=20.0, poll_s=0.02)[marker]
        samples.append(sample(record, acted_at))
    return samples


def resume_cuts(url: str, cuts: int) -> dict:
    """One answer cut every few tokens and resumed; its text checked against the store."""
    tokens = 40 * (cuts + 1)
    created = requests.post(
        f"{url}/api/generations",
        json={"content": f"{new_marker()} [demo tokens={tokens} gap=0.002]", "resume_grace_s": 30},
        headers=AUTH,
        timeout=10,
    ).json()
    received, last_id, made = [], None, 0
    while True:
        stream = Stream(url, created["events_url"], None, last_event_id=last_id)
        done = False
        for frame in stream.frames():
            fields = dict(
                line.split(": ", 1) for line in frame.decode().split("\n") if ": " in line
            )
            if fields.get("event") == "token":
                received.append(json.loads(fields["data"])["text"])
                last_id = fields["id"]
            done = fields.get("event") == "done"
            if done or (made < cuts and len(received) % 7 == 6):
                break
        if done:
            stream.close("fin")
            break
        stream.close("rst")
        made += 1
    conversation = requests.get(
        f"{url}/api/conversations/{created['conversation_id']}", headers=AUTH, timeout=10
    ).json()
    saved = next(m for m in conversation["messages"] if m["id"] == created["message_id"])
    text = "".join(received)
    return {
        "cuts": made,
        "characters": len(saved["content"]),
        "lost_or_duplicated": abs(len(text) - len(saved["content"]))
        + sum(a != b for a, b in zip(text, saved["content"], strict=False)),
        "equal": text == saved["content"],
        "status": saved["status"],
    }


def stop_table(rows: list[tuple[str, str, list[Sample]]]) -> str:
    lines = [
        "| transport | provider | trials | p50 ms | p99 ms | max ms | tokens after stop |",
        "|---|---|--:|--:|--:|--:|--:|",
    ]
    for transport, scenario, samples in rows:
        values = sorted(s.latency_ms for s in samples if s.latency_ms is not None)
        p50, p99 = percentile(values, 50), percentile(values, 99)
        lines.append(
            f"| {transport} | {scenario} | {len(samples)} | {p50:.2f} | {p99:.2f} "
            f"| {values[-1]:.2f} | {sum(s.tokens_after for s in samples)} |"
        )
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--trials", type=int, default=40, help="stops per transport and case")
    parser.add_argument("--cuts", type=int, default=100, help="forced cuts of one resumed answer")
    parser.add_argument(
        "--only", choices=sorted(TRANSPORTS), action="append", help="these transports alone"
    )
    parser.add_argument("--out", type=Path, default=servers.RESULTS, help="where the JSON goes")
    args = parser.parse_args()
    demo = servers.Demo()
    stopwire = servers.stopwire(demo.url)
    try:
        rows = []
        for transport, how in TRANSPORTS.items():
            if args.only and transport not in args.only:
                continue
            for scenario, silent in (("20 ms/token", False), ("silent 10 s", True)):
                rows.append(
                    (transport, scenario, stop_trials(stopwire.url, demo, how, silent, args.trials))
                )
        resumed = resume_cuts(stopwire.url, args.cuts)
    finally:
        stopwire.close()
        demo.close()
    machine = platform.processor() or platform.machine()
    print(f"{platform.node()} {machine}, {datetime.now(UTC):%Y-%m-%d %H:%M} UTC")
    print(stop_table(rows))
    worst = max(
        percentile(sorted(s.latency_ms for s in samples if s.latency_ms is not None), 99)
        for *_, samples in rows
    )
    print(f"\nworst p99 {worst:.2f} ms (goal <= {GOAL_P99_MS} ms)")
    print(
        f"\nresume: {resumed['cuts']} forced cuts, {resumed['characters']} characters, "
        f"{resumed['lost_or_duplicated']} lost or duplicated, "
        f"equal to the saved answer: {resumed['equal']}"
    )
    args.out.mkdir(parents=True, exist_ok=True)
    out = args.out / "transports.json"
    out.write_text(
        json.dumps(
            {
                "stops": [
                    {
                        "transport": t,
                        "provider": s,
                        "latencies_ms": [x.latency_ms for x in samples],
                        "tokens_after": [x.tokens_after for x in samples],
                    }
                    for t, s, samples in rows
                ],
                "resume": resumed,
            },
            indent=2,
        )
    )
    print(f"\nwrote {out}")


if __name__ == "__main__":
    main()

"""The disk under the database fills up at the end of 30 streams, under real gunicorn.

Every answer must end either saved exactly as streamed, or reported to its client as
not saved (`"saved": false` in `done`) and then saved anyway once there is room
again. No answer stays `streaming`, none of the two healthy workers' answers is taken
for `worker_lost`, and every conversation takes its next turn.

The database lives on a small tmpfs (tests/store/disk.py) that a filler file fills
until ENOSPC: root only, and under CI a test that cannot run fails.
"""

import json
import socket
import sqlite3
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import requests
from conftest import Server, Upstream

from tests.store.disk import Tmpfs

KEY = "tkey"
STREAMS = 30
WORKERS = 2
FULL_AFTER_END_S = 2.0  # the disk stays full this long after the last stream ended
FLUSH_S = 0.5
LOST_AFTER_S = 2.0  # shorter than the disk stays full
TIMEOUT_S = 20.0  # no socket read and no wait of this test lasts longer


class Client:
    """One keep-alive connection to a known worker, with the client key on every request.

    It asks the worker's pid first (the connection stays on that worker), then sends
    one chat with `Connection: close` and reads its SSE stream exactly as sent.
    """

    def __init__(self, port: int):
        self.sock = socket.create_connection(("127.0.0.1", port), timeout=TIMEOUT_S)
        self.buffer = b""
        self.status = 0
        self._send("GET", "/api/debug/stats")
        self.pid: int = json.loads(self._body())["pid"]

    def chat(self, body: dict[str, Any]) -> None:
        """POST /api/chat; the response head is read by `started`."""
        self._send("POST", "/api/chat", body)

    def started(self) -> None:
        """Read the head and wait until the first token arrived (the turn is saved)."""
        self.status = self._head()[0]
        assert self.status == 200, (self.status, self.buffer[:300])
        while b"event: token" not in self.buffer:
            self._recv()

    def events(self) -> list[tuple[str, Any]]:
        """Everything to the end of the response, as (event, data) pairs."""
        while self._recv():
            pass
        self.sock.close()
        return [_parse(frame) for frame in _dechunk(self.buffer).split(b"\n\n") if frame]

    def _send(self, method: str, path: str, body: dict[str, Any] | None = None) -> None:
        payload = b"" if body is None else json.dumps(body).encode()
        lines = [
            f"{method} {path} HTTP/1.1",
            "Host: 127.0.0.1",
            f"Authorization: Bearer {KEY}",
            f"Content-Length: {len(payload)}",
        ]
        if body is not None:
            lines += ["Content-Type: application/json", "Connection: close"]
        self.sock.sendall(("\r\n".join(lines) + "\r\n\r\n").encode() + payload)

    def _head(self) -> tuple[int, dict[str, str]]:
        while b"\r\n\r\n" not in self.buffer:
            if not self._recv():
                raise EOFError("the server closed the connection before its answer")
        head, self.buffer = self.buffer.split(b"\r\n\r\n", 1)
        status, *fields = head.decode("latin-1").split("\r\n")
        headers = dict(line.lower().split(": ", 1) for line in fields)
        return int(status.split()[1]), headers

    def _body(self) -> bytes:
        status, headers = self._head()
        assert status == 200, (status, self.buffer[:300])
        length = int(headers["content-length"])
        while len(self.buffer) < length:
            self._recv()
        body, self.buffer = self.buffer[:length], self.buffer[length:]
        return body

    def _recv(self) -> bool:
        data = self.sock.recv(65536)
        self.buffer += data
        return bool(data)


def _dechunk(raw: bytes) -> bytes:
    """The body of a whole chunked response."""
    body = b""
    while raw:
        size_line, raw = raw.split(b"\r\n", 1)
        size = int(size_line.split(b";")[0], 16)
        if size == 0:
            break
        body, raw = body + raw[:size], raw[size + 2 :]
    return body


def _parse(frame: bytes) -> tuple[str, Any]:
    """One SSE frame as (event, data); a `: keepalive` comment as ("comment", None)."""
    fields = dict(
        line.split(": ", 1) for line in frame.decode().split("\n") if not line.startswith(":")
    )
    return fields.get("event", "comment"), json.loads(fields["data"]) if "data" in fields else None


def clients_on_every_worker(port: int, count: int) -> list[Client]:
    """`count` connections, as many on each worker (the kernel picks; keep trying)."""
    per_worker = count // WORKERS
    held: dict[int, list[Client]] = {}
    deadline = time.monotonic() + TIMEOUT_S
    while sum(map(len, held.values())) < count and time.monotonic() < deadline:
        client = Client(port)
        mine = held.setdefault(client.pid, [])
        if len(mine) < per_worker:
            mine.append(client)
        else:
            client.sock.close()
    assert sorted(map(len, held.values())) == [per_worker] * WORKERS, held
    return [client for clients in held.values() for client in clients]


def answers(database: Path) -> dict[str, dict[str, Any]]:
    """Every assistant row by message id, read as another process would."""
    db = sqlite3.connect(f"file:{database}?mode=ro", uri=True, timeout=TIMEOUT_S)
    db.row_factory = sqlite3.Row
    try:
        rows = db.execute(
            "SELECT id, conversation_id, content, status, reason, usage FROM messages "
            "WHERE role = 'assistant'"
        )
        return {
            row["id"]: {**dict(row), "usage": json.loads(row["usage"] or "null")} for row in rows
        }
    finally:
        db.close()


def watch_until_none_streams(database: Path) -> tuple[dict[str, dict[str, Any]], set[str]]:
    """The rows once none streams, and every answer seen `worker_lost` on the way."""
    lost: set[str] = set()
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        rows = answers(database)
        lost |= {key for key, row in rows.items() if row["reason"] == "worker_lost"}
        if all(row["status"] != "streaming" for row in rows.values()):
            return rows, lost
        time.sleep(0.05)
    raise AssertionError(f"still streaming after 60s: {rows}")


@pytest.fixture
def disk(tmp_path: Path) -> Iterator[Tmpfs]:
    """A 4 MB tmpfs for the database (its WAL grows to about 1.2 MB here)."""
    tmpfs = Tmpfs(tmp_path / "disk", size="4m")
    yield tmpfs
    tmpfs.close()


@pytest.fixture
def server_on_disk(upstream: Upstream, disk: Tmpfs) -> Iterator[Server]:
    """Two gevent workers whose database is on the tmpfs; a client key, no running cap."""
    process = Server(
        upstream.url,
        workers=WORKERS,
        STOPWIRE_DATABASE=str(disk.path / "stopwire.sqlite3"),
        STOPWIRE_CLIENT_KEYS=f"t:{KEY}",
        STOPWIRE_MAX_ACTIVE_PER_USER="0",
        # Claims go stale while the disk is full: the sweeps after it must spare them.
        STOPWIRE_FLUSH_S=str(FLUSH_S),
        STOPWIRE_LOST_AFTER_S=str(LOST_AFTER_S),
    )
    yield process
    process.close()


@pytest.mark.slow
def test_disk_full_at_the_end_of_30_streams(server_on_disk: Server, disk: Tmpfs) -> None:
    database = disk.path / "stopwire.sqlite3"
    clients = clients_on_every_worker(server_on_disk.port, STREAMS)
    workers = {client.pid for client in clients}
    for number, client in enumerate(clients):
        client.chat({"content": f"[demo tokens=40 gap=0.02] answer {number}"})
    for client in clients:
        client.started()

    disk.fill()
    streams = []
    for client in clients:
        events = client.events()
        names = [name for name, _ in events]
        assert names[0] == "meta" and names[-1] == "done" and "error" not in names, names
        text = "".join(data["text"] for name, data in events if name == "token")
        streams.append((events[0][1], text, events[-1][1]))
    time.sleep(FULL_AFTER_END_S)

    while_full = answers(database)
    for meta, text, done in streams:
        assert done["status"] == "complete", done
        row = while_full[meta["message_id"]]
        if "saved" in done:  # not saved yet, and still claimed by its live worker
            assert done["saved"] is False, done
            assert (row["status"], row["reason"]) == ("streaming", None), row
        else:  # saved before the client heard so: exactly what it streamed
            assert (row["status"], row["content"]) == ("complete", text), (row, done)
    told = sum("saved" in done for _, _, done in streams)
    assert told, "no save failed: the disk filled up too late"
    # A new chat cannot be saved now: a 503 to retry, never a 500.
    refused = requests.post(
        f"{server_on_disk.url}/api/chat",
        json={"content": "while full"},
        headers={"Authorization": f"Bearer {KEY}"},
        timeout=30,
    )
    assert refused.status_code == 503, refused.text
    assert refused.json()["error"]["type"] == "unavailable" and refused.headers["Retry-After"]

    disk.free()
    saved, lost = watch_until_none_streams(database)
    assert not lost, f"{len(lost)} answers of a healthy worker were taken for lost"
    for meta, text, done in streams:
        row = saved[meta["message_id"]]
        assert (row["status"], row["reason"], row["content"]) == ("complete", None, text), row
        assert row["usage"] == done["usage"]
    assert len(saved) == STREAMS

    nexts = clients_on_every_worker(server_on_disk.port, STREAMS)
    assert {client.pid for client in nexts} == workers  # both lived through it
    for client, (meta, _, _) in zip(nexts, streams, strict=True):
        client.chat(
            {"content": "[demo tokens=3 gap=0] again", "conversation_id": meta["conversation_id"]}
        )
    for client in nexts:
        client.started()
        *_, (name, done) = client.events()
        assert (name, done["status"], done.get("saved", True)) == ("done", "complete", True)

"""Workers end: SIGTERM interrupts and saves every stream; kill -9 loses at most a flush.
And many streams over several workers share one database without losing anything.
Each test runs on SQLite and on PostgreSQL."""

import json
import os
import signal
import time
import uuid

import pytest
import requests
from conftest import Server
from wire import AUTH, Connection, open_stream, pinned


def streamed_text(events) -> str:
    return "".join(e.data["text"] for e in events if e.event == "token")


BOTH = ("sqlite", "postgresql")


def saved_message(server: Server, message_id: str) -> dict:
    (row,) = server.query("SELECT * FROM messages WHERE id = ?", (message_id,))
    return row


def text_until_the_connection_dies(conn) -> str:
    text = ""
    try:
        while (event := conn.next_event()) is not None:
            text += event.data["text"] if event.event == "token" else ""
    except (EOFError, ConnectionError):
        pass  # it died with the worker
    return text


@pytest.mark.parametrize("database", BOTH)
def test_sigterm_interrupts_saves_and_tells_every_client(upstream, database):
    server = Server(upstream.url, workers=2, database=database, STOPWIRE_GRACEFUL_TIMEOUT="10")
    try:
        prompts = [uuid.uuid4().hex for _ in range(4)]
        conns = [open_stream(server.url, f"{p} [demo tokens=500 gap=0.02]") for p in prompts]
        seen = [streamed_text(c.events(tokens=3)) for c in conns]
        silent = open_stream(server.url, f"{uuid.uuid4().hex} [demo ttft=60]")
        term_at = time.monotonic()
        server.process.send_signal(signal.SIGTERM)  # a deploy: the master stops its workers
        for conn, text in [*zip(conns, seen, strict=True), (silent, "")]:
            events = conn.events()
            assert time.monotonic() - term_at < 5.0, (time.monotonic() - term_at, events[-3:])
            done = events[-1].data
            assert (done["status"], done["reason"]) == ("interrupted", "shutdown")
            assert done["receipt"]["signal"] == "shutdown"
            saved = saved_message(server, conn.meta["message_id"])
            assert (saved["status"], saved["reason"]) == ("interrupted", "shutdown")
            assert saved["content"] == text + streamed_text(events)
        for prompt in prompts:
            assert upstream.ended(prompt)["ended"] == "client_closed"
        server.process.wait(15)
    finally:
        server.close()


@pytest.mark.parametrize("database", BOTH)
def test_kill_9_of_the_streaming_worker_leaves_nothing_streaming(upstream, database):
    server = Server(upstream.url, workers=2, database=database, STOPWIRE_LOST_AFTER_S="3")
    try:
        prompt = uuid.uuid4().hex
        victim, conn = pinned(server.url)
        conn.post("/api/chat", {"content": f"{prompt} [demo tokens=500 gap=0.02]"})
        events = conn.events(tokens=10)
        conn.meta = events[0].data
        seen = streamed_text(events)
        deadline = time.monotonic() + 5
        while not saved_message(server, conn.meta["message_id"])["content"]:
            assert time.monotonic() < deadline, "no partial text was ever flushed"
            time.sleep(0.05)
        os.kill(victim, signal.SIGKILL)  # after at least one flush (every 1 s)
        seen += text_until_the_connection_dies(conn)
        killed_at = time.monotonic()
        assert upstream.ended(prompt)["ended"] == "client_closed"

        while time.monotonic() - killed_at < 15:
            saved = saved_message(server, conn.meta["message_id"])
            if saved["status"] != "streaming":
                break
            time.sleep(0.2)
        assert (saved["status"], saved["reason"]) == ("interrupted", "worker_lost")
        assert saved["content"] and seen.startswith(saved["content"])
        # At most about one flush interval (1 s = 50 tokens at 20 ms) was lost.
        assert len(seen.split()) - len(saved["content"].split()) <= 60
        detected = requests.get(
            f"{server.url}/api/conversations/{conn.meta['conversation_id']}",
            headers=AUTH,
            timeout=10,
        ).json()
        assert [m["status"] for m in detected["messages"]] == ["complete", "interrupted"]
    finally:
        server.close()


@pytest.mark.parametrize("database", BOTH)
def test_50_concurrent_streams_over_2_workers_lose_nothing(upstream, database):
    server = Server(upstream.url, workers=2, database=database, STOPWIRE_FLUSH_S="0.05")
    try:
        conns = []
        for _ in range(50):
            conn = Connection(server.url)
            conn.post("/api/chat", {"content": f"{uuid.uuid4().hex} [demo tokens=40 gap=0.01]"})
            conns.append(conn)
        texts = {}
        for conn in conns:
            events = conn.events()
            meta, done = events[0].data, events[-1].data
            assert done["status"] == "complete", done
            texts[meta["message_id"]] = streamed_text(events)
        rows = server.query(
            "SELECT id, content, status, usage FROM messages WHERE role = 'assistant'"
        )
        assert len(rows) == 50
        for message_id, content, status, usage in (tuple(row.values()) for row in rows):
            assert status == "complete"
            assert content == texts[message_id]
            assert json.loads(usage)["completion_tokens"] == 40
        assert "database is locked" not in server.output()
        assert "Traceback" not in server.output()
    finally:
        server.close()

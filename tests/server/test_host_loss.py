"""A whole host killed (`kill -9` of its master and workers): the other host's workers,
on the same PostgreSQL database, mark its streaming answer `interrupted`/`worker_lost`
within `STOPWIRE_LOST_AFTER_S`, keep the text it flushed, and take the next turn."""

import os
import signal
import time
import uuid

import requests
from conftest import Server
from wire import AUTH, Connection, open_stream

LOST_AFTER_S = 2.0
FLUSH_S = 0.5
LONG = "[demo tokens=2000 gap=0.02]"  # 40 s: the host dies long before it ends


def streamed_text(events) -> str:
    return "".join(e.data["text"] for e in events if e.event == "token")


def test_a_killed_host_has_its_answer_marked_lost_by_the_survivors(upstream):
    settings = {"STOPWIRE_LOST_AFTER_S": str(LOST_AFTER_S), "STOPWIRE_FLUSH_S": str(FLUSH_S)}
    a = Server(upstream.url, workers=2, database="postgresql", **settings)
    b = None
    try:
        b = Server(upstream.url, workers=2, STOPWIRE_DATABASE=str(a.database), **settings)
        prompt = uuid.uuid4().hex[:12]
        conn = open_stream(a.url, f"{prompt} {LONG}")
        before = conn.events(tokens=10)
        time.sleep(3 * FLUSH_S)  # the client stops reading; the host streams and flushes on
        before += conn.events(tokens=1)
        # The host had sent at least this when it flushed (at least once) in the wait below.
        flushed_before = streamed_text(before)
        time.sleep(2 * FLUSH_S)

        os.killpg(a.process.pid, signal.SIGKILL)  # master and workers: the host is gone
        killed_at = time.monotonic()
        a.process.wait(5)
        rest = []
        try:
            while (event := conn.next_event()) is not None:
                rest.append(event)
        except (EOFError, OSError):
            pass  # the kernel closed the dead worker's socket
        assert not any(e.event == "done" for e in rest), rest  # nobody told the client

        url = f"{b.url}/api/conversations/{conn.meta['conversation_id']}"
        deadline = killed_at + LOST_AFTER_S + 4 * FLUSH_S
        while True:
            saved = requests.get(url, headers=AUTH, timeout=5).json()
            answer = next(m for m in saved["messages"] if m["id"] == conn.meta["message_id"])
            if answer["status"] != "streaming":
                break
            assert time.monotonic() < deadline, f"still streaming after the host died: {answer}"
            time.sleep(0.05)
        marked_after = time.monotonic() - killed_at
        assert (answer["status"], answer["reason"]) == ("interrupted", "worker_lost"), answer
        # The flushed text is kept: at least the earlier frames, never more than was sent.
        full_text = flushed_before + streamed_text(rest)
        assert answer["content"], answer
        assert full_text.startswith(answer["content"]), (answer["content"], full_text)
        assert len(answer["content"]) >= len(flushed_before), (answer["content"], flushed_before)

        # The conversation takes a new turn again, through the surviving host.
        turn = Connection(b.url)
        turn.post(
            "/api/chat", {"content": "again", "conversation_id": conn.meta["conversation_id"]}
        )
        assert turn.status == 200, turn._raw[:300]
        done = turn.events()[-1]
        assert done.event == "done" and done.data["status"] == "complete", done
        saved = requests.get(url, headers=AUTH, timeout=5).json()
        assert [m["status"] for m in saved["messages"] if m["role"] == "assistant"] == [
            "interrupted",
            "complete",
        ]
        print(f"marked worker_lost {marked_after:.2f} s after kill -9")
    finally:
        if b is not None:
            b.close()
        a.close()  # drops the database last

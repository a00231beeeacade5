"""PostgreSQL goes away under a live stream and comes back: the stream goes on, the
answer is saved in full once the server is back, and no worker dies.

A PostgreSQL server of the test's own (never the shared one), stopped with
`-m immediate` (every session cut, as by a crash or a failover) and started again.
"""

import time
import uuid

import requests
from conftest import Server
from wire import AUTH, open_stream, pinned

from tests.store.databases import Cluster

OUTAGE_S = 1.0


def test_a_postgres_restart_mid_stream_breaks_nothing(upstream):
    cluster = Cluster()
    server = None
    try:
        server = Server(
            upstream.url,
            workers=1,
            STOPWIRE_DATABASE=cluster.url,
            STOPWIRE_FLUSH_S="0.2",
            STOPWIRE_LOST_AFTER_S="30",
        )
        pid, _ = pinned(server.url)
        prompt = f"{uuid.uuid4().hex} [demo tokens=200 gap=0.02]"  # about 4 s of text
        conn = open_stream(server.url, prompt)
        before = conn.events(tokens=20)  # streaming, and flushed at least once
        cluster.stop()
        during_started = time.monotonic()
        during = conn.events(tokens=20)  # tokens keep coming while the database is gone
        assert time.monotonic() - during_started < 2
        time.sleep(OUTAGE_S)
        cluster.start()
        after = conn.events()
        events = before + during + after
        text = "".join(e.data["text"] for e in events if e.event == "token")
        assert events[-1].event == "done"
        assert events[-1].data["status"] == "complete", events[-1].data

        conversation_url = f"{server.url}/api/conversations/{conn.meta['conversation_id']}"
        deadline = time.monotonic() + 15  # the final save retries with backoff
        while time.monotonic() < deadline:
            response = requests.get(conversation_url, headers=AUTH, timeout=10)
            if response.status_code == 200:
                saved = response.json()["messages"][1]
                if saved["status"] != "streaming":
                    break
            time.sleep(0.2)
        assert response.status_code == 200, response.text
        assert (saved["status"], saved["content"]) == ("complete", text)

        # The same worker serves on, and new chats are saved again.
        assert pinned(server.url)[0] == pid
        again = open_stream(server.url, f"{uuid.uuid4().hex} [demo tokens=3]")
        assert again.events()[-1].data["status"] == "complete"
        assert "Worker exiting" not in server.output()
    finally:
        if server is not None:
            server.close()
        cluster.close()

"""Many users, one service: each identity sees and stops only its own, within its limits.

Real gunicorn with two workers; identities from client keys and from browser cookies.
"""

import json
import uuid

import pytest
import requests
from conftest import Server
from wire import Connection, connection_to, open_stream

ALICE = {"Authorization": "Bearer key-alice"}
BOB = {"Authorization": "Bearer key-bob"}
LONG = "[demo tokens=400 gap=0.02]"


@pytest.fixture(scope="module")
def keyed(upstream):
    """Two client keys, two identities; at most 3 answers each at once."""
    server = Server(
        upstream.url,
        workers=2,
        STOPWIRE_HEARTBEAT_S="0.3",
        STOPWIRE_CLIENT_KEYS="alice:key-alice,bob:key-bob",
        STOPWIRE_MAX_ACTIVE_PER_USER="3",
    )
    yield server
    server.close()


def finished_answer(url: str, who: dict[str, str]) -> dict:
    """A complete answer of `who`'s: its conversation, message and generation ids."""
    conn = open_stream(url, f"{uuid.uuid4().hex} [demo tokens=3 gap=0]", headers=who)
    assert conn.events()[-1].data["status"] == "complete"
    conn.sock.close()
    return conn.meta


def test_each_key_sees_only_its_own_conversations(keyed):
    mine = finished_answer(keyed.url, ALICE)
    cid, mid = mine["conversation_id"], mine["message_id"]
    base = f"{keyed.url}/api/conversations"

    listed = requests.get(base, headers=ALICE, timeout=10).json()["conversations"]
    assert cid in [c["id"] for c in listed]
    theirs = requests.get(base, headers=BOB, timeout=10).json()["conversations"]
    assert cid not in [c["id"] for c in theirs]

    # Bob gets exactly what an unknown id gets, for every operation.
    unknown = requests.get(f"{base}/conv_unknown", headers=BOB, timeout=10)
    for response in (
        requests.get(f"{base}/{cid}", headers=BOB, timeout=10),
        requests.delete(f"{base}/{cid}", headers=BOB, timeout=10),
        requests.post(f"{base}/{cid}/messages/{mid}/regenerate", headers=BOB, timeout=10),
        requests.post(f"{base}/{cid}/messages/{mid}/continue", headers=BOB, timeout=10),
        requests.post(
            f"{keyed.url}/api/generations/{mine['generation_id']}/stop", headers=BOB, timeout=10
        ),
    ):
        assert response.status_code == 404, response.text
        assert response.json()["error"]["type"] == unknown.json()["error"]["type"] == "not_found"

    # Alice's conversation is untouched by all of that.
    kept = requests.get(f"{base}/{cid}", headers=ALICE, timeout=10).json()
    assert [m["status"] for m in kept["messages"]] == ["complete", "complete"]


def test_only_the_owner_stops_a_live_answer_and_from_either_worker(keyed, upstream):
    prompt = uuid.uuid4().hex
    streaming = open_stream(keyed.url, f"{prompt} {LONG}", headers=ALICE)
    streaming.events(tokens=2)
    stream_pid = streaming_worker(keyed)
    stop_path = f"/api/generations/{streaming.meta['generation_id']}/stop"

    # Bob, on either worker: as if it did not exist, and the answer streams on.
    for want in (lambda pid: pid == stream_pid, lambda pid: pid != stream_pid):
        bob = connection_to(keyed.url, want, headers=BOB)
        bob.post(stop_path, {})
        assert bob.status == 404, bob.json()
        bob.sock.close()
    assert upstream.record(prompt)["ended"] == "streaming"
    assert streaming.events(tokens=2)  # still getting tokens

    # Alice, from the worker that does not hold the stream.
    alice = connection_to(keyed.url, lambda pid: pid != stream_pid, headers=ALICE)
    alice.post(stop_path, {"seen_chars": 5})
    assert alice.status == 200 and alice.json()["status"] == "stopped"
    assert streaming.events()[-1].data["reason"] == "user_stop"
    assert upstream.ended(prompt)["ended"] == "client_closed"


def streaming_worker(server: Server) -> int:
    """The pid of the one worker with a live generation, from the workers' own stats."""
    live: dict[int, int] = {}
    for _ in range(300):
        probe = Connection(server.url)
        stats = probe.get_json("/api/debug/stats")
        probe.sock.close()
        live[stats["pid"]] = stats["live_generations"]
        if len(live) == 2:
            break
    busy = [pid for pid, count in live.items() if count]
    assert len(live) == 2 and len(busy) == 1, live
    return busy[0]


def test_a_fourth_answer_at_once_is_refused_while_another_identity_streams(keyed):
    running = [
        open_stream(keyed.url, f"{uuid.uuid4().hex} {LONG}", headers=ALICE) for _ in range(3)
    ]
    fourth = Connection(keyed.url, headers=ALICE)
    fourth.post("/api/chat", {"content": f"{uuid.uuid4().hex} {LONG}"})
    assert fourth.status == 429
    assert int(fourth.headers["retry-after"]) >= 1
    assert fourth.json()["error"]["type"] == "rate_limited"

    other = open_stream(keyed.url, f"{uuid.uuid4().hex} {LONG}", headers=BOB)
    assert other.events(tokens=1)  # Bob's own limit is untouched

    # Stopping one of Alice's frees its slot at once (on whichever worker holds it).
    stop = f"{keyed.url}/api/generations/{running[0].meta['generation_id']}/stop"
    assert requests.post(stop, headers=ALICE, timeout=10).json()["status"] == "stopped"
    again = open_stream(keyed.url, f"{uuid.uuid4().hex} [demo tokens=2 gap=0]", headers=ALICE)
    assert again.events()[-1].data["status"] == "complete"
    for conn in (*running, other):
        conn.close_rst()


@pytest.fixture(scope="module")
def standalone(upstream):
    """The service as a browser meets it: no client keys, identities in cookies."""
    server = Server(upstream.url, workers=2, STOPWIRE_CLIENT_KEYS="")
    yield server
    server.close()


def browser(server: Server) -> requests.Session:
    """A cookie jar that loaded the page, as a browser tab does."""
    jar = requests.Session()
    page = jar.get(server.url, timeout=10)
    assert page.status_code == 200
    cookie = jar.cookies.get("stopwire")
    assert cookie, page.headers
    set_cookie = page.headers["Set-Cookie"].lower()
    assert "httponly" in set_cookie and "samesite=lax" in set_cookie
    return jar


def chat(jar: requests.Session, server: Server, content: str) -> dict:
    """A short answer streamed to `jar`; its `meta` ids."""
    response = jar.post(f"{server.url}/api/chat", json={"content": content}, timeout=10)
    assert response.status_code == 200, response.text
    meta = response.text.split("event: meta\ndata: ", 1)[1].split("\n", 1)[0]
    return json.loads(meta)


def test_cookie_identities_keep_to_themselves(standalone):
    first, second = browser(standalone), browser(standalone)
    mine = chat(first, standalone, "Hello [demo tokens=3 gap=0]")
    base = f"{standalone.url}/api/conversations"
    assert [c["id"] for c in first.get(base, timeout=10).json()["conversations"]] == [
        mine["conversation_id"]
    ]
    assert second.get(base, timeout=10).json()["conversations"] == []
    assert second.get(f"{base}/{mine['conversation_id']}", timeout=10).status_code == 404
    stop = f"{standalone.url}/api/generations/{mine['generation_id']}/stop"
    assert second.post(stop, timeout=10).status_code == 404
    assert first.post(stop, timeout=10).json()["status"] == "complete"  # its own, finished


def test_a_cross_site_request_with_the_cookie_is_refused(standalone):
    jar = browser(standalone)
    mine = chat(jar, standalone, "Hi [demo tokens=2 gap=0]")
    url = f"{standalone.url}/api/conversations/{mine['conversation_id']}"
    for headers in ({"Origin": "https://evil.example"}, {"Sec-Fetch-Site": "cross-site"}):
        refused = jar.delete(url, headers=headers, timeout=10)
        assert refused.status_code == 403 and refused.json()["error"]["type"] == "forbidden"
    same_site = {"Origin": standalone.url, "Sec-Fetch-Site": "same-origin"}
    assert jar.delete(url, headers=same_site, timeout=10).status_code == 204

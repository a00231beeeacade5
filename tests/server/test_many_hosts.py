"""Stops across hosts through Redis: two gunicorn masters (two "hosts": separate run
directories, so the unix-socket path between their workers cannot help), one database
file, one redis-server of the tests' own that the tests block, kill and start again.

Bounds are generous (a loaded CI machine must not flake); bench/cross_host.py measures
milliseconds.
"""

import time
import uuid
from collections.abc import Iterator
from contextlib import contextmanager

import pytest
import redis
import requests
from conftest import Server
from wire import AUTH, Connection, open_stream

from tests.redis_server import RedisServer

SOON_S = 1.0  # "closed at once", generously
BACK_S = 15.0  # listeners resubscribe within their backoff (at most 2 s) after Redis is back
LONG = "[demo tokens=2000 gap=0.02]"  # 40 s: stopped long before it ends


@pytest.fixture(scope="module")
def bus_redis() -> Iterator[RedisServer]:
    """A redis-server of this module's own."""
    process = RedisServer()
    yield process
    process.stop()


@contextmanager
def two_hosts(
    upstream_url: str, bus_redis: RedisServer, database: str = ""
) -> Iterator[tuple[Server, Server]]:
    """Hosts A and B (two gunicorn masters, two workers each, separate run directories)
    sharing A's database and one Redis, every stop listener subscribed."""
    settings = {"STOPWIRE_REDIS_URL": bus_redis.url, "STOPWIRE_HEARTBEAT_S": "0.3"}
    a = Server(upstream_url, workers=2, database=database, **settings)
    try:
        b = Server(upstream_url, workers=2, STOPWIRE_DATABASE=str(a.database), **settings)
    except BaseException:
        a.close()
        raise
    try:
        wait_subscribed(bus_redis, 4)
        yield a, b
    finally:
        b.close()
        a.close()  # last: it owns the database


@pytest.fixture(scope="module")
def hosts(upstream, bus_redis: RedisServer) -> Iterator[tuple[Server, Server]]:
    """Hosts A and B, sharing A's SQLite database and the Redis."""
    with two_hosts(upstream.url, bus_redis) as pair:
        yield pair


@pytest.fixture
def redis_client(bus_redis: RedisServer) -> Iterator[redis.Redis]:
    """A plain client of the module's Redis."""
    client = redis.Redis.from_url(bus_redis.url, decode_responses=True)
    yield client
    client.close()


def wait_subscribed(bus_redis: RedisServer, listeners: int, timeout: float = BACK_S) -> None:
    """Wait until `listeners` workers are subscribed to the stop channel."""
    client = redis.Redis.from_url(bus_redis.url, decode_responses=True)
    deadline = time.monotonic() + timeout
    try:
        while time.monotonic() < deadline:
            try:
                if dict(client.pubsub_numsub("stopwire:stops")).get("stopwire:stops") == listeners:
                    return
            except redis.ConnectionError:
                pass
            time.sleep(0.05)
    finally:
        client.close()
    raise AssertionError(f"{listeners} listeners never subscribed")


def marker() -> str:
    return uuid.uuid4().hex[:12]


def streamed_text(events) -> str:
    return "".join(e.data["text"] for e in events if e.event == "token")


def stop_request(host: Server, conn: Connection, **body) -> requests.Response:
    url = f"{host.url}/api/generations/{conn.meta['generation_id']}/stop"
    return requests.post(url, json=body, headers=AUTH, timeout=15)


def saved_answer(host: Server, conn: Connection) -> dict:
    """The assistant message a stream wrote, as the database holds it now."""
    url = f"{host.url}/api/conversations/{conn.meta['conversation_id']}"
    saved = requests.get(url, headers=AUTH, timeout=10).json()
    return next(m for m in saved["messages"] if m["id"] == conn.meta["message_id"])


def assert_bus_down(response: requests.Response) -> None:
    """A cross-host stop while the bus is down: a 503 to retry, with a JSON error."""
    assert response.status_code == 503, response.text
    assert response.headers["Retry-After"] == "1"
    error = response.json()["error"]
    assert error["type"] == "unavailable" and "retry" in error["message"], error


def assert_stopped_by_user(done, seen: str, saved: dict) -> None:
    assert done.event == "done" and done.data["status"] == "stopped", done
    assert done.data["reason"] == "user_stop"
    assert (saved["status"], saved["reason"], saved["content"]) == ("stopped", "user_stop", seen)


def test_a_stop_on_another_host_closes_the_provider_and_keeps_what_was_seen(hosts, upstream):
    a, b = hosts
    prompt = marker()
    conn = open_stream(a.url, f"{prompt} {LONG}")
    seen = streamed_text(conn.events(tokens=5))
    stopped_at = time.monotonic()
    answer = stop_request(b, conn, seen_chars=len(seen) - 4)
    assert answer.status_code == 200, answer.text
    summary = answer.json()
    assert (summary["status"], summary["reason"]) == ("stopped", "user_stop")
    assert summary["generation_id"] == conn.meta["generation_id"]
    assert summary["receipt"]["signal"] == "user_stop"
    assert summary["receipt"]["stop_to_close_ms"] < SOON_S * 1000
    record = upstream.ended(prompt)
    assert record["ended"] == "client_closed"
    assert record["client_closed_at"] - stopped_at < SOON_S
    done = conn.events()[-1]
    assert done.data == summary  # the stream's own end says the same
    assert_stopped_by_user(done, seen[:-4], saved_answer(b, conn))
    again = stop_request(b, conn)  # idempotent, still from the other host
    assert again.status_code == 200 and again.json()["status"] == "stopped"


def test_another_users_answer_is_unknown_on_the_other_host_too(hosts, upstream):
    a, b = hosts
    prompt = marker()
    conn = open_stream(a.url, f"{prompt} {LONG}")
    conn.events(tokens=2)
    url = f"{b.url}/api/generations/{conn.meta['generation_id']}/stop"
    other = {"Authorization": "Bearer someone-else"}
    # A wrong key is a 401; a stranger with the page's cookie is a different user: 404.
    assert requests.post(url, json={}, headers=other, timeout=15).status_code == 401
    stranger = requests.Session()
    stranger.get(f"{b.url}/", timeout=10)  # the page issues the anonymous cookie
    refused = stranger.post(url, json={}, timeout=15, headers={"Origin": b.url})
    assert refused.status_code == 404, refused.text
    assert upstream.record(prompt)["ended"] == "streaming"
    assert stop_request(b, conn).status_code == 200
    conn.events()


def test_an_unknown_id_is_a_404_from_every_host(hosts):
    for host in hosts:
        response = requests.post(
            f"{host.url}/api/generations/gen_unknown/stop", json={}, headers=AUTH, timeout=15
        )
        assert response.status_code == 404, response.text


def test_a_stop_published_while_the_holder_is_not_subscribed_applies_when_it_is_back(
    hosts, upstream, bus_redis, redis_client
):
    a, b = hosts
    prompt = marker()
    conn = open_stream(a.url, f"{prompt} {LONG}")
    seen = streamed_text(conn.events(tokens=4))
    # Every listener is cut off and may not subscribe again: the stop's message is lost.
    redis_client.execute_command("ACL", "SETUSER", "default", "-subscribe")
    try:
        redis_client.execute_command("CLIENT", "KILL", "TYPE", "pubsub")
        wait_subscribed(bus_redis, 0)
        assert_bus_down(stop_request(b, conn, seen_chars=len(seen)))
        assert upstream.record(prompt)["ended"] == "streaming"  # recorded, not yet applied
        key = f"stopwire:stop:{conn.meta['generation_id']}"
        assert redis_client.hgetall(key) == {"key:tester": str(len(seen))}
    finally:
        redis_client.execute_command("ACL", "SETUSER", "default", "+subscribe")
    # Back on the channel, the holder re-reads the records of what it streams.
    record = upstream.ended(prompt, timeout=BACK_S)
    assert record["ended"] == "client_closed"
    done = conn.events()[-1]
    assert_stopped_by_user(done, seen, saved_answer(b, conn))
    wait_subscribed(bus_redis, 4)
    retry = stop_request(b, conn, seen_chars=len(seen))  # the page's retry gets the summary
    assert retry.status_code == 200 and retry.json() == done.data


def test_redis_stopped_and_started_mid_traffic(hosts, upstream, bus_redis):
    a, b = hosts
    prompts = [marker() for _ in range(6)]
    conns = [open_stream(a.url, f"{p} {LONG}") for p in prompts]
    seen = [streamed_text(c.events(tokens=2)) for c in conns]
    ok: list[tuple[int, dict]] = []  # every 2xx stop: (stream, summary)

    def stopped(i: int, host: Server) -> requests.Response:
        response = stop_request(host, conns[i], seen_chars=len(seen[i]))
        if response.status_code == 200:
            ok.append((i, response.json()))
        return response

    bus_redis.stop()
    try:
        # Same host: this worker or its sibling over the unix socket; Redis is not needed.
        for i in (0, 1):
            assert stopped(i, a).status_code == 200
        # Another host: nobody can tell whether it streams there.
        assert_bus_down(stopped(2, b))
        for i in (3, 4, 5):  # the others stream on, untouched by the outage
            assert [e.event for e in conns[i].events(tokens=2)][-1] == "token"
    finally:
        bus_redis.start()
    assert upstream.record(prompts[2])["ended"] == "streaming"  # the 503 stopped nothing
    wait_subscribed(bus_redis, 4)
    for i in (2, 3, 4, 5):
        response = stopped(i, b)
        assert response.status_code == 200, response.text
    for i, summary in ok:  # no 2xx stop was lost: each closed its provider and was saved
        assert (summary["status"], summary["reason"]) == ("stopped", "user_stop"), summary
        assert upstream.ended(prompts[i])["ended"] == "client_closed"
        done = conns[i].events()[-1]
        assert_stopped_by_user(done, seen[i], saved_answer(b, conns[i]))
    assert sorted(i for i, _ in ok) == [0, 1, 2, 3, 4, 5]


# -- a viewer that comes back on another host (issue 13: the mirror in a Redis Stream) --


def create(host: Server, content: str, grace_s: float) -> dict:
    body = {"content": content, "resume_grace_s": grace_s}
    response = requests.post(f"{host.url}/api/generations", json=body, headers=AUTH, timeout=5)
    assert response.status_code == 201, response.text
    return response.json()


def view(host: Server, created: dict, last_id: str | None = None) -> Connection:
    conn = Connection(host.url)
    conn.get(created["events_url"], {"Last-Event-ID": last_id} if last_id else None)
    assert conn.status == 200, (conn.status, conn._raw[:300])
    return conn


def cut_then_back(
    a: Server, b: Server, redis_client: redis.Redis, content: str, grace_s: float
) -> tuple[dict, list, Connection]:
    """An answer viewed on A and cut after 3 tokens, once A mirrors it viewed again on B
    from the last event it had: (the answer, A's events, B's connection)."""
    created = create(a, content, grace_s)
    first_conn = view(a, created)
    first = first_conn.events(tokens=3)
    first_conn.close_rst()
    key = f"stopwire:answer:{created['generation_id']}"
    deadline = time.monotonic() + 5
    while not redis_client.exists(key):  # A mirrors it once its viewer left
        assert time.monotonic() < deadline, "never mirrored"
        time.sleep(0.02)
    return created, first, view(b, created, first[-1].id)


def answer_row(host: Server, generation_id: str) -> dict:
    query = "SELECT content, status, reason FROM messages WHERE generation_id = ?"
    return host.query(query, (generation_id,))[0]


def test_a_viewer_back_on_another_host_gets_exactly_the_rest_and_keeps_it_running(
    hosts, upstream, redis_client
):
    """Cut on A with a 1 s grace, back on B: B reads A's mirror (the missed text once,
    then the live tail). Its viewing keeps the answer running well past the grace."""
    a, b = hosts
    content = f"{marker()} [demo tokens=80 gap=0.05]"
    created, first, back = cut_then_back(a, b, redis_client, content, grace_s=1)
    rest = back.events()  # 4 s of answer: past the grace only because B views it
    assert rest[-1].event == "done" and rest[-1].data["status"] == "complete", rest[-1]
    assert all(e.event != "meta" for e in rest)
    text = streamed_text(first) + streamed_text(rest)
    assert len(text.split()) == 80
    assert text == answer_row(a, created["generation_id"])["content"]
    assert [int(e.id) for e in rest if e.event == "token"] == sorted(
        int(e.id) for e in rest if e.event == "token"
    )
    assert not redis_client.exists(f"stopwire:viewing:{created['generation_id']}")


def test_once_the_viewer_elsewhere_leaves_a_new_grace_runs_out_and_stops_it(
    hosts, upstream, redis_client
):
    a, b = hosts
    prompt = marker()
    created, _, back = cut_then_back(a, b, redis_client, f"{prompt} {LONG}", grace_s=1)
    back.events(tokens=3)
    time.sleep(1.5)  # past the first grace: B's lease keeps it running
    assert upstream.record(prompt)["ended"] == "streaming"
    left_at = time.monotonic()
    back.close_fin()
    record = upstream.ended(prompt, timeout=10)
    assert record["client_closed_at"] - left_at < 1 + 1 + 1.5  # a check, a grace, slack
    row = answer_row(a, created["generation_id"])
    assert (row["status"], row["reason"]) == ("stopped", "client_disconnect")


def test_a_stop_from_the_host_a_viewer_came_back_to_is_immediate(hosts, upstream, redis_client):
    a, b = hosts
    prompt = marker()
    created, _, back = cut_then_back(a, b, redis_client, f"{prompt} {LONG}", grace_s=10)
    back.events(tokens=2)
    stopped_at = time.monotonic()
    url = f"{b.url}/api/generations/{created['generation_id']}/stop"
    assert requests.post(url, json={}, headers=AUTH, timeout=15).status_code == 200
    record = upstream.ended(prompt)
    assert record["client_closed_at"] - stopped_at < SOON_S
    done = back.events()[-1]
    assert done.event == "done" and done.data["reason"] == "user_stop", done

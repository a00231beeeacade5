"""Debian's nginx in front of two hosts, started on the shipped deploy/nginx.conf.

Two gunicorn masters ("hosts": separate run directories, so only Redis carries a stop
between them), one PostgreSQL database, one redis-server of this module's own, and nginx
round-robin in front. Through nginx: streams land on both hosts, stops land on either,
a client that leaves closes the provider at once, and the conversation reloads.
"""

import os
import re
import shutil
import signal
import subprocess
import tempfile
import time
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest
import requests
from conftest import ROOT, Server, free_port, wait_for_port
from test_many_hosts import two_hosts
from wire import AUTH, Connection, open_stream

from tests.redis_server import RedisServer

LONG = "[demo tokens=2000 gap=0.02]"  # 40 s: ended by the test long before
# Silent after two tokens: only nginx watching its client can notice the client leave
# (no token write fails first), the case a tab closed during a long think is.
QUIET = "[demo tokens=2000 gap=0.02 silence=2:30]"
ABORT_S = 0.1  # client closes its socket to nginx -> provider closed
CONF = ROOT / "deploy" / "nginx.conf"
# What the test substitutes in the shipped file: the two hosts and the listen port.
HOST_A, HOST_B, LISTEN = "stopwire-a.internal:8000", "stopwire-b.internal:8000", "listen 80;"
# Added for the test only, after each proxy_pass: which host answered (never expose
# this to users).
PROXY_PASS = re.compile(r"(proxy_pass http://\w+;)")
WHO = 'add_header X-Upstream-Addr "$upstream_addr" always;'


def nginx_or_skip() -> str:
    """The nginx binary; without it the tests skip locally and fail under CI."""
    binary = shutil.which("nginx") or next(
        (p for p in ("/usr/sbin/nginx", "/sbin/nginx") if os.access(p, os.X_OK)), None
    )
    if binary is None:
        if os.environ.get("CI") == "true":
            pytest.fail("nginx is not installed (apt-get install nginx)", pytrace=False)
        pytest.skip("nginx is not installed")
    return binary


def render(a: str, b: str, port: int, text: str | None = None) -> str:
    """deploy/nginx.conf (or `text`) with the hosts and the port of this test."""
    conf = CONF.read_text() if text is None else text
    assert conf.count(LISTEN) == 1, f"{LISTEN!r} must appear once in {CONF}"
    # Once in the round-robin upstream, once in the one chosen by generation id.
    for host in (HOST_A, HOST_B):
        assert conf.count(host) == 2, f"{host!r} must appear twice in {CONF}"
    conf = conf.replace(HOST_A, a).replace(HOST_B, b).replace(LISTEN, f"listen 127.0.0.1:{port};")
    return PROXY_PASS.sub(rf"\1\n            {WHO}", conf)


class Nginx:
    """nginx in the foreground on a rendered conf, in a prefix directory of its own."""

    def __init__(self, conf: str, port: int):
        binary = nginx_or_skip()
        self.port = port
        self.url = f"http://127.0.0.1:{port}"
        self.prefix = Path(tempfile.mkdtemp(prefix="stopwire-nginx-"))
        (self.prefix / "logs").mkdir()
        self.conf = self.prefix / "nginx.conf"
        self.conf.write_text(conf)
        self.error_log = self.prefix / "error.log"
        directives = f"daemon off; pid {self.prefix}/nginx.pid; error_log {self.error_log};"
        command = [binary, "-c", str(self.conf), "-p", f"{self.prefix}/", "-e", str(self.error_log)]
        checked = subprocess.run([*command, "-t"], capture_output=True, text=True)
        assert checked.returncode == 0, checked.stderr
        self.process = subprocess.Popen(
            [*command, "-g", directives],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
            start_new_session=True,
        )
        wait_for_port(port, self.process)

    def close(self) -> None:
        if self.process.poll() is None:
            os.kill(self.process.pid, signal.SIGQUIT)  # the master, by pid; it ends its workers
            try:
                self.process.wait(5)
            except subprocess.TimeoutExpired:
                os.killpg(self.process.pid, signal.SIGKILL)
                self.process.wait(5)
        shutil.rmtree(self.prefix, ignore_errors=True)


@pytest.fixture(scope="module")
def bus_redis() -> Iterator[RedisServer]:
    process = RedisServer()
    yield process
    process.stop()


@pytest.fixture(scope="module")
def hosts(upstream, bus_redis: RedisServer) -> Iterator[tuple[Server, Server]]:
    """Hosts A and B, two workers each, one PostgreSQL database, one Redis."""
    nginx_or_skip()  # before paying for two hosts
    with two_hosts(upstream.url, bus_redis, database="postgresql") as pair:
        yield pair


@pytest.fixture(scope="module")
def nginx(hosts) -> Iterator[Nginx]:
    a, b = hosts
    port = free_port()
    proxy = Nginx(render(f"127.0.0.1:{a.port}", f"127.0.0.1:{b.port}", port), port)
    yield proxy
    proxy.close()


def marker() -> str:
    return uuid.uuid4().hex[:12]


def streamed_text(events) -> str:
    return "".join(e.data["text"] for e in events if e.event == "token")


def live_on(host: Server) -> int:
    """Live generations of both of a host's workers (asked directly, not through nginx)."""
    counts: dict[int, int] = {}
    deadline = time.monotonic() + 10
    while len(counts) < 2 and time.monotonic() < deadline:
        with requests.Session() as fresh:  # a new connection may reach the other worker
            stats = fresh.get(f"{host.url}/api/debug/stats", headers=AUTH, timeout=5).json()
        counts[stats["pid"]] = stats["live_generations"]
    assert len(counts) == 2, f"only workers {sorted(counts)} of {host.url} answered"
    return sum(counts.values())


def saved_answer(base_url: str, conn: Connection) -> dict:
    url = f"{base_url}/api/conversations/{conn.meta['conversation_id']}"
    response = requests.get(url, headers=AUTH, timeout=10)
    assert response.status_code == 200, response.text
    return next(m for m in response.json()["messages"] if m["id"] == conn.meta["message_id"])


def test_streams_through_nginx_land_on_both_hosts_and_stops_reach_them(hosts, nginx, upstream):
    a, b = hosts
    address = {f"127.0.0.1:{a.port}": "a", f"127.0.0.1:{b.port}": "b"}
    prompts = [marker() for _ in range(6)]
    conns = [open_stream(nginx.url, f"{p} {LONG}") for p in prompts]
    streamed_on = [address[c.headers["x-upstream-addr"]] for c in conns]
    assert sorted(streamed_on) == ["a", "a", "a", "b", "b", "b"], streamed_on  # round robin
    seen = [streamed_text(c.events(tokens=3)) for c in conns]  # frames arrive one by one
    assert (live_on(a), live_on(b)) == (3, 3)

    stopped_on = []
    for i, conn in enumerate(conns):
        if i == 3:  # shift the round robin so the stops cover both same- and cross-host
            assert requests.get(f"{nginx.url}/healthz", timeout=5).status_code == 200
        url = f"{nginx.url}/api/generations/{conn.meta['generation_id']}/stop"
        stopped_at = time.monotonic()
        response = requests.post(url, json={"seen_chars": len(seen[i])}, headers=AUTH, timeout=15)
        assert response.status_code == 200, response.text
        stopped_on.append(address[response.headers["x-upstream-addr"]])
        summary = response.json()
        assert (summary["status"], summary["reason"]) == ("stopped", "user_stop"), summary
        record = upstream.ended(prompts[i])
        assert record["ended"] == "client_closed", record
        assert record["client_closed_at"] - stopped_at < 1.0
        done = conn.events()[-1]
        assert done.event == "done" and done.data == summary
    crossed = [s != t for s, t in zip(streamed_on, stopped_on, strict=True)]
    assert any(crossed) and not all(crossed), (streamed_on, stopped_on)

    # The page reloads the conversation through nginx (either host): the stopped text.
    for i, conn in enumerate(conns):
        saved = saved_answer(nginx.url, conn)
        assert (saved["status"], saved["reason"], saved["content"]) == (
            "stopped",
            "user_stop",
            seen[i],
        )
    assert (live_on(a), live_on(b)) == (0, 0)


def test_a_client_leaving_nginx_closes_the_provider_at_once(hosts, nginx, upstream):
    a, b = hosts
    prompts = [marker() for _ in range(8)]
    conns = [
        open_stream(nginx.url, f"{p} {LONG if i < 4 else QUIET}") for i, p in enumerate(prompts)
    ]
    hosts_used = {c.headers["x-upstream-addr"] for c in conns}
    assert hosts_used == {f"127.0.0.1:{a.port}", f"127.0.0.1:{b.port}"}, hosts_used
    for conn in conns:
        conn.events(tokens=2)
    time.sleep(0.1)  # the quiet ones are silent now
    latencies = []
    for i, conn in enumerate(conns):
        # A tab closed (FIN) or a crashed client (RST), streaming or silent.
        closed_at = conn.close_fin() if i % 2 == 0 else conn.close_rst()
        record = upstream.ended(prompts[i])
        assert record["ended"] == "client_closed", record
        latencies.append(record["client_closed_at"] - closed_at)
    print("abort -> provider closed:", [f"{s * 1000:.1f} ms" for s in latencies])
    assert max(latencies) < ABORT_S, [f"{s * 1000:.1f} ms" for s in latencies]
    for conn in conns:
        deadline = time.monotonic() + 5
        while (saved := saved_answer(nginx.url, conn))["status"] == "streaming":
            assert time.monotonic() < deadline, saved
            time.sleep(0.05)
        assert saved["reason"] == "client_disconnect", saved


def test_operator_endpoints_are_not_served_through_nginx(hosts, nginx):
    a, _ = hosts
    assert requests.get(f"{nginx.url}/metrics", timeout=5).status_code == 404
    assert requests.get(f"{a.url}/metrics", timeout=5).status_code == 200  # on the host itself
    # The hosts refuse debug stats to anything that came through a proxy.
    debug = requests.get(f"{nginx.url}/api/debug/stats", headers=AUTH, timeout=5)
    assert debug.status_code == 404


def test_every_view_of_an_answer_reaches_the_host_streaming_it(hosts, nginx, upstream):
    """EventSource through nginx: created on either host, viewed, cut, viewed again."""
    hosts_viewing: set[str] = set()
    answers = 0
    # Until ids have reached both hosts (the hash decides: 4 answers usually, 20 at most).
    while answers < 4 or (len(hosts_viewing) < 2 and answers < 20):
        answers += 1
        prompt = marker()
        body = {"content": f"{prompt} [demo tokens=40 gap=0.02]", "resume_grace_s": 10}
        created = requests.post(f"{nginx.url}/api/generations", json=body, headers=AUTH).json()
        conn = Connection(nginx.url)
        conn.get(created["events_url"])
        assert conn.status == 200
        host = conn.headers["x-upstream-addr"]
        hosts_viewing.add(host)
        first = conn.events(tokens=3)
        conn.close_rst()  # a network blip: nginx closes its upstream, the answer runs on
        back = Connection(nginx.url)
        back.get(created["events_url"], {"Last-Event-ID": first[-1].id})
        assert back.status == 200 and back.headers["x-upstream-addr"] == host
        rest = back.events()
        assert rest[-1].event == "done" and rest[-1].data["status"] == "complete"
        text = streamed_text(first) + streamed_text(rest)
        assert len(text.split()) == 40
        back.meta = created
        assert saved_answer(nginx.url, back)["content"] == text
    assert len(hosts_viewing) == 2, hosts_viewing

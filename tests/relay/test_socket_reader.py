"""`Generation` reading a real provider socket without blocking: the viewer is the reader.

The provider is a small HTTP server on a thread of its own (this process is not
monkey-patched, so requests' sockets are plain ones; libev watches them the same way),
over plain TCP and over TLS (a CA of the test's own, from trustme), since a TLS socket
hands out whole records only and can hold decrypted bytes the kernel no longer shows.
It sends a chunked OpenAI stream piece by piece as the test says, and records when its
client closed the connection. What is checked here is what only a socket shows: the
viewer reads the provider itself (the pump greenlet is gone once the stream is open),
its one wait covers the socket, its heartbeat and a stop, the idle limit is kept without
a socket timeout, a grace hands the reading to a pump and back, bytes that came with
the headers are not left waiting, and a finished connection goes back to the pool as
it was.
"""

import json
import os
import queue
import select
import socket
import ssl
import struct
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import gevent
import gevent.event
import pytest
import requests
import trustme
from transport import loopback_pair, ready_socket, reported, wait_until

from flask_stopwire.providers import http as http_module
from flask_stopwire.providers import make_provider
from flask_stopwire.providers.base import Message
from flask_stopwire.relay import disconnect, priorities
from flask_stopwire.relay import generation as generation_module
from flask_stopwire.relay.generation import (
    Generation,
    RelayEvent,
    RelaySettings,
    on_this_host,
)

_END = b""  # the last chunk
_ESTABLISHED = 1  # TCP_INFO's state: no FIN sent or received


def chunk(*texts: str) -> bytes:
    """The SSE events of an OpenAI stream carrying these texts."""
    return b"".join(
        b"data: %s\n\n" % json.dumps({"choices": [{"delta": {"content": t}}]}).encode()
        for t in texts
    )


DONE = b"data: [DONE]\n\n"


class ThreadProvider:
    """One streaming answer over one real connection, sent as the test says."""

    HEAD = (
        b"HTTP/1.1 200 OK\r\nContent-Type: text/event-stream\r\nTransfer-Encoding: chunked\r\n\r\n"
    )

    def __init__(self, first: bytes | None = None, tls: ssl.SSLContext | None = None):
        self._listener = socket.create_server(("127.0.0.1", 0))
        scheme = "https" if tls else "http"
        self.url = f"{scheme}://127.0.0.1:{self._listener.getsockname()[1]}/v1"
        self.closed_at: float | None = None  # when its client's FIN or RST came
        self._first = first  # sent in the same write as the headers
        self._tls = tls
        self._sends: queue.Queue[bytes | str] = queue.Queue()
        self.written = 0  # chunks written after the headers (`first` not counted), a hang-up too
        self._thread = threading.Thread(target=self._serve, daemon=True)
        self._thread.start()

    def send(self, data: bytes) -> None:
        """One chunk now (`_END`: the last chunk), in a write (a TLS record) of its own."""
        self._sends.put(data)

    def hang_up(self, how: str) -> None:
        """End the connection after what was sent: with a FIN, or with an RST."""
        self._sends.put(how)

    def wait_sent(self, count: int) -> None:
        """Until `count` chunks are written (and the hang-up done, if one was asked for),
        blocking the whole process: the event loop does not run meanwhile."""
        deadline = time.monotonic() + 5
        while self.written < count or not self._sends.empty():
            assert time.monotonic() < deadline, "the provider did not send in time"
            time.sleep(0.001)

    def close(self) -> None:
        self._listener.close()

    def _serve(self) -> None:
        conn, _ = self._listener.accept()
        if self._tls is not None:
            conn = self._tls.wrap_socket(conn, server_side=True)
        with conn:
            _read_request(conn)
            conn.sendall(self.HEAD + (_framed(self._first) if self._first else b""))
            while self.closed_at is None:
                try:
                    data = self._sends.get(timeout=0.002)
                    if isinstance(data, str):
                        _hang_up(conn, data)
                        self.written += 1  # done, not only taken off the queue
                        return
                    conn.sendall(_framed(data))
                    self.written += 1
                except queue.Empty:
                    pass
                except OSError:
                    self.closed_at = time.monotonic()
                if select.select([conn], [], [], 0)[0] and not _recv(conn):
                    self.closed_at = time.monotonic()


FIN, RST = "fin", "rst"


def _hang_up(conn: socket.socket, how: str) -> None:
    """Close without a TLS close_notify: a FIN, or with SO_LINGER 0 an RST."""
    if how == RST:
        conn.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
    conn.close()


def _framed(data: bytes) -> bytes:
    return b"%x\r\n%s\r\n" % (len(data), data) if data else b"0\r\n\r\n"


def _recv(conn: socket.socket) -> bytes:
    try:
        return conn.recv(65536)
    except ssl.SSLWantReadError:
        return b"?"  # part of a record: not the end
    except OSError:
        return b""


def _read_request(conn: socket.socket) -> None:
    data = b""
    while b"\r\n\r\n" not in data:
        data += conn.recv(65536)
    head, body = data.split(b"\r\n\r\n", 1)
    length = int(head.lower().split(b"content-length:")[1].split(b"\r\n")[0])
    while len(body) < length:
        body += conn.recv(65536)


Serve = Callable[..., ThreadProvider]


@pytest.fixture(scope="module")
def certificates(tmp_path_factory: pytest.TempPathFactory) -> tuple[ssl.SSLContext, Path]:
    """A server context for 127.0.0.1 and the CA bundle that trusts it."""
    ca = trustme.CA()
    server = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    ca.issue_cert("127.0.0.1").configure_cert(server)
    bundle = tmp_path_factory.mktemp("ca") / "ca.pem"
    ca.cert_pem.write_to_path(str(bundle))
    return server, bundle


@pytest.fixture(params=["tcp", "tls"])
def serve(
    request: pytest.FixtureRequest, certificates: tuple[ssl.SSLContext, Path]
) -> Iterator[Serve]:
    """Start a provider (over TLS for the `tls` run); each is closed after the test."""
    started: list[ThreadProvider] = []

    def start(first: bytes | None = None) -> ThreadProvider:
        tls = certificates[0] if request.param == "tls" else None
        started.append(ThreadProvider(first, tls))
        return started[-1]

    yield start
    for server in started:
        server.close()


@pytest.fixture
def provider(serve: Serve) -> ThreadProvider:
    return serve()


@pytest.fixture
def make(certificates: tuple[ssl.SSLContext, Path]) -> Callable[..., Generation]:
    """A generation asking `provider`, whose certificate its session trusts."""

    def build(provider: ThreadProvider, **settings: float) -> Generation:
        relay_settings = RelaySettings(
            heartbeat_s=settings.get("heartbeat_s", 60.0),
            connect_timeout_s=2,
            read_timeout_s=settings.get("read_timeout_s", 10.0),
        )
        session = requests.Session()
        session.trust_env = False  # as `new_session` makes it: no REQUESTS_CA_BUNDLE over ours
        session.verify = str(certificates[1])
        return Generation(
            make_provider("openai", provider.url, "", "m"),
            [Message("user", "hi")],
            session,
            relay_settings,
            grace_s=settings.get("grace_s", 0.0),
        )

    return build


Make = Callable[..., Generation]


def next_event(events: Iterator[RelayEvent], timeout: float = 2.0) -> RelayEvent:
    """The next event, which must come within `timeout` seconds."""
    with gevent.Timeout(timeout, AssertionError(f"no event within {timeout}s")):
        return next(events)


def streaming(generation: Generation, provider: ThreadProvider) -> Iterator[RelayEvent]:
    """The generation's events, meta and a first token ("one") read."""
    events = generation.events()
    assert next_event(events).kind == "meta"
    provider.send(chunk("one"))
    assert next_event(events) == RelayEvent("token", "one")
    return events


def test_the_viewer_reads_the_provider_and_the_pump_is_gone(
    provider: ThreadProvider, make: Make
) -> None:
    generation = make(provider)
    events = streaming(generation, provider)
    assert generation._pump.dead  # its stack is freed: the viewer reads on
    provider.send(chunk(" there", ", you"))  # two events in one read: one frame
    assert next_event(events) == RelayEvent("token", " there, you")
    big = "x" * 70_000  # one event over several reads (and TLS records)
    provider.send(chunk(big))
    assert next_event(events) == RelayEvent("token", big)
    provider.send(chunk("!"))
    assert next_event(events) == RelayEvent("token", "!")
    provider.send(DONE)
    provider.send(_END)
    rest = list(events)
    assert [e.kind for e in rest] == ["done"] and rest[0].data["status"] == "complete"
    assert generation.text() == "one there, you" + big + "!"


def test_records_queued_behind_a_read_are_read_in_its_turn_a_few_at_most(
    certificates: tuple[ssl.SSLContext, Path], make: Make
) -> None:
    """A TLS socket hands out one record a read: the ones queued behind it are read in
    the same wake (one frame), up to the share of one wake; the rest in the next."""
    provider = ThreadProvider(tls=certificates[0])
    try:
        events = streaming(make(provider), provider)
        letters = "abcdefghij"
        for letter in letters:
            provider.send(chunk(letter))
        provider.wait_sent(1 + len(letters))  # every record queued before the reader wakes
        taken = 1 + http_module._MORE_AT_ONCE
        assert next_event(events) == RelayEvent("token", letters[:taken])
        assert next_event(events) == RelayEvent("token", letters[taken:])
    finally:
        provider.close()


@pytest.mark.parametrize("how", [FIN, RST])
def test_a_provider_that_hangs_up_right_after_a_token_is_a_disconnect(
    provider: ThreadProvider, make: Make, how: str
) -> None:
    """The token and the end are both there when the reader wakes. Whether the poll after
    the token's read sees the end or the next wake does, the token goes out, then the
    error: no spin, no hang."""
    generation = make(provider)
    events = streaming(generation, provider)
    provider.send(chunk(" two"))
    provider.hang_up(how)
    provider.wait_sent(3)
    rest = [next_event(events) for _ in range(3)]
    assert rest[0] == RelayEvent("token", " two")
    assert [e.kind for e in rest[1:]] == ["error", "done"]
    assert rest[2].data["status"] == "error" and rest[2].data["reason"] == "upstream_error"
    assert rest[1].data["type"] == "provider_disconnected"
    assert generation.kept_text() == "one two"


def test_bytes_that_came_with_the_headers_are_read_at_once(serve: Serve, make: Make) -> None:
    """The first event shares the headers' packet: nothing more comes for a while, so the
    socket never turns readable again; the viewer must still get it now."""
    events = make(serve(first=chunk("early"))).events()
    assert next_event(events).kind == "meta"
    assert next_event(events, timeout=1.0) == RelayEvent("token", "early")


def test_heartbeats_while_the_provider_is_silent(provider: ThreadProvider, make: Make) -> None:
    events = make(provider, heartbeat_s=0.05).events()
    assert next_event(events).kind == "meta"
    assert [next_event(events).kind for _ in range(3)] == ["keepalive"] * 3
    provider.send(chunk("late"))
    kinds = [next_event(events) for _ in range(2)]
    assert RelayEvent("token", "late") in kinds


def test_a_stop_while_the_reader_waits_closes_the_provider_at_once(
    provider: ThreadProvider, make: Make
) -> None:
    generation = make(provider)
    events = streaming(generation, provider)
    gevent.spawn_later(0.05, generation.stop, "user_stop")
    rest = list(events)
    assert rest[-1].data["status"] == "stopped" and rest[-1].data["reason"] == "user_stop"
    wait_until(lambda: provider.closed_at is not None)
    assert provider.closed_at - generation.stop_at < 0.5  # type: ignore[operator]


def test_a_token_read_late_in_a_long_loop_turn_serves_a_departure_first(
    provider: ThreadProvider, make: Make
) -> None:
    """A client that left while the loop worked (here a watcher of a higher priority,
    busy 5 ms) is served before the next token of that turn, not at the next poll."""
    events = streaming(make(provider), provider)
    order: list[str] = []
    reader = gevent.spawn(lambda: order.append(next_event(events).data))
    listener = socket.create_server(("127.0.0.1", 0))
    leaving = socket.create_connection(listener.getsockname())
    ours, _ = listener.accept()
    listener.close()
    watch = disconnect.Watch(ours, lambda: order.append("departure"))
    busy_a, busy_b = socket.socketpair()
    busy = gevent.get_hub().loop.io(busy_a.fileno(), 1, priority=priorities.DEPARTURES)

    def long_work() -> None:
        busy.stop()
        leaving.close()
        time.sleep(0.005)  # blocks the loop: the FIN arrives, no poll

    try:
        gevent.sleep(0.05)  # the reader sleeps on the provider's socket
        provider.send(chunk("two"))
        busy_b.send(b"x")
        time.sleep(0.05)  # both sockets readable at the loop's next poll
        busy.start(long_work)
        reader.get(timeout=2)
        assert order == ["departure", "two"]
    finally:
        busy.close()
        watch.close()
        for sock in (busy_a, busy_b, ours, leaving):
            sock.close()


def test_a_token_goes_before_the_new_work_of_the_same_loop_turn(
    provider: ThreadProvider, make: Make
) -> None:
    """A running answer's token and a new chat's work (a socket of gevent's default
    priority, as a new request's and a provider's headers are) ready in one loop turn:
    the token is relayed first, so a burst of new chats does not hold it."""
    events = streaming(make(provider), provider)
    order: list[str] = []
    reader = gevent.spawn(lambda: order.append(next_event(events).data))
    with ready_socket(order, "new work") as watch_new_work:  # gevent's default priority
        gevent.sleep(0.05)  # the reader sleeps on the provider's socket
        provider.send(chunk("two"))
        provider.wait_sent(2)  # both sockets readable at the loop's next poll
        watch_new_work()
        reader.get(timeout=2)
        wait_until(lambda: len(order) == 2, timeout=1)
    assert order == ["two", "new work"]


def test_a_stop_steps_aside_once_the_provider_has_its_fin(
    provider: ThreadProvider, make: Make, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A provider on this host may be queued on our CPU: we yield it right after the FIN
    left, and before recording the end (not once the bookkeeping is done)."""
    generation = make(provider)
    events = streaming(generation, provider)
    sock = generation._response.raw.connection.sock  # type: ignore[union-attr]
    seen = []

    def step_aside() -> None:
        fin_sent = sock.getsockopt(socket.IPPROTO_TCP, socket.TCP_INFO, 1)[0] != _ESTABLISHED
        seen.append((fin_sent, generation.settled.is_set()))

    monkeypatch.setattr(os, "sched_yield", step_aside)
    monkeypatch.setattr(generation_module, "_stepped_aside_in_turn", -1)  # a turn of its own
    generation.stop("user_stop")
    assert [e.kind for e in events] == ["done"]
    assert seen == [(True, False)]


def test_stops_in_one_loop_turn_step_aside_once(
    serve: Serve, make: Make, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Stops asked for in one loop turn yield once, at the first FIN: the others never wait
    behind it."""
    providers = [serve(), serve()]
    generations = [make(provider) for provider in providers]
    streams = [streaming(g, p) for g, p in zip(generations, providers, strict=True)]
    turns: list[int] = []
    monkeypatch.setattr(os, "sched_yield", lambda: turns.append(gevent.get_hub().loop.iteration))
    monkeypatch.setattr(generation_module, "_stepped_aside_in_turn", -1)  # a turn of its own
    for generation in generations:  # one greenlet, no switch: one loop turn
        generation.stop("user_stop")
    assert all([e.kind for e in events] == ["done"] for events in streams)
    assert len(turns) == 1


def test_clients_leaving_at_once_step_aside_once_every_provider_has_its_fin(
    serve: Serve, make: Make, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A mass disconnect yields once its departures were all served: a yield at the first
    FIN let the providers it woke take the CPU while the others' FINs waited."""
    providers = [serve(), serve()]
    generations = [make(provider) for provider in providers]
    pairs = [loopback_pair() for _ in providers]
    streams = []
    for generation, provider, (ours, _) in zip(generations, providers, pairs, strict=True):
        streams.append(generation.events(client_sock=ours))
        assert next_event(streams[-1]).kind == "meta"
        provider.send(chunk("one"))
        assert next_event(streams[-1]) == RelayEvent("token", "one")
    socks = [g._response.raw.connection.sock for g in generations]  # type: ignore[union-attr]
    seen = []

    def step_aside() -> None:
        states = [s.getsockopt(socket.IPPROTO_TCP, socket.TCP_INFO, 1)[0] for s in socks]
        seen.append([state != _ESTABLISHED for state in states])

    monkeypatch.setattr(os, "sched_yield", step_aside)
    monkeypatch.setattr(generation_module, "_stepped_aside_in_turn", -1)  # a turn of its own
    try:
        for _, client in pairs:
            client.close()
        departures = disconnect.departures()
        reported(departures, 2)
        departures.ask()
        assert seen == [[True, True]]  # once, with both FINs sent
        assert all(g.outcome.reason == "client_disconnect" for g in generations)  # type: ignore[union-attr]
    finally:
        for events in streams:
            events.close()
        for ours, _ in pairs:
            ours.close()


class Peer:
    """A socket as `on_this_host` sees it."""

    def __init__(self, family: int, address: object):
        self.family, self._address = family, address

    def getpeername(self) -> object:
        if isinstance(self._address, OSError):
            raise self._address
        return self._address


@pytest.mark.parametrize(
    ("family", "address", "local"),
    [
        (socket.AF_INET, ("127.0.0.1", 11434), True),
        (socket.AF_INET, ("127.5.6.7", 80), True),
        (socket.AF_INET6, ("::1", 80, 0, 0), True),
        (socket.AF_INET6, ("::ffff:127.0.0.1", 80, 0, 0), True),
        (socket.AF_INET, ("10.1.2.3", 443), False),
        (socket.AF_INET6, ("2001:db8::1", 443, 0, 0), False),
        (socket.AF_INET6, ("fe80::1%eth0", 443, 0, 2), False),
        (socket.AF_INET, OSError("not connected"), False),
        (socket.AF_UNIX, "/run/provider.sock", False),
    ],
)
def test_only_a_provider_on_this_host_is_stepped_aside_for(
    family: int, address: object, local: bool
) -> None:
    assert on_this_host(Peer(family, address)) is local  # type: ignore[arg-type]


def test_the_idle_limit_holds_without_a_socket_timeout(
    provider: ThreadProvider, make: Make
) -> None:
    generation = make(provider, read_timeout_s=0.2)
    events = generation.events()
    assert next_event(events).kind == "meta"
    provider.send(chunk("a"))
    assert next_event(events) == RelayEvent("token", "a")
    began = time.monotonic()
    rest = list(events)
    assert [e.kind for e in rest] == ["error", "done"]
    assert rest[-1].data["reason"] == "timeout"
    assert 0.1 < time.monotonic() - began < 2.0
    wait_until(lambda: provider.closed_at is not None)


def test_within_a_grace_a_pump_reads_on_and_a_returning_viewer_takes_over(
    provider: ThreadProvider, make: Make
) -> None:
    generation = make(provider, grace_s=5.0)
    first = generation.events()
    assert next_event(first).kind == "meta"
    provider.send(chunk("seen"))
    assert next_event(first) == RelayEvent("token", "seen")
    first.close()  # the client left: nobody views, so a pump reads on
    provider.send(chunk(" while away"))
    wait_until(lambda: generation.text() == "seen while away")
    back = generation.events(after=4)
    assert next_event(back) == RelayEvent("token", " while away")
    provider.send(chunk(" and back"))
    assert next_event(back) == RelayEvent("token", " and back")
    wait_until(lambda: generation._reader is not None and generation._reader != "pump")
    provider.send(DONE)
    provider.send(_END)
    assert list(back)[-1].data["status"] == "complete"


def test_a_finished_connection_goes_back_to_the_pool_as_it_was(
    provider: ThreadProvider, make: Make
) -> None:
    generation = make(provider, read_timeout_s=7.0)
    events = generation.events()
    provider.send(chunk("x"))
    provider.send(DONE)
    provider.send(_END)
    assert list(events)[-1].data["status"] == "complete"
    pool = generation._response.raw._pool  # type: ignore[union-attr]
    wait_until(lambda: any(conn is not None for conn in list(pool.pool.queue)))
    pooled = [conn for conn in list(pool.pool.queue) if conn is not None]
    assert len(pooled) == 1 and pool.num_connections == 1
    assert pooled[0].sock is not None and pooled[0].sock.gettimeout() == 7.0


def test_a_stop_is_recorded_at_once_while_the_reader_is_busy_writing(
    provider: ThreadProvider, make: Make
) -> None:
    """The reader holds a token it has not finished sending (its client reads slowly):
    a stop closes the provider and records the end now, not once that write is done."""
    generation = make(provider)
    events = streaming(generation, provider)  # ...and not asked for more
    gevent.spawn(generation.stop, "user_stop")
    assert generation.wait_settled(2)
    assert generation.summary()["reason"] == "user_stop"
    wait_until(lambda: provider.closed_at is not None)
    rest = list(events)
    assert [e.kind for e in rest] == ["done"]


def test_a_kill_of_the_reader_while_it_records_the_end_does_not_cut_the_record(
    provider: ThreadProvider, make: Make
) -> None:
    """A WebSocket that closes kills its answers' greenlets; the reader records the end
    in a greenlet of its own, waited for, so a kill then lands in the wait, not the save."""
    generation = make(provider)
    release = gevent.event.Event()
    recorded: list[str] = []

    def save(ended: Generation) -> bool:
        release.wait()  # a database that takes its time
        recorded.append(ended.summary()["status"])
        return True

    generation.on_end = save
    reader = gevent.spawn(lambda: list(streaming(generation, provider)))
    wait_until(lambda: generation.text() == "one")
    provider.send(DONE)
    provider.send(_END)
    wait_until(lambda: generation.ended_at is not None)  # the save has begun
    reader.kill()
    release.set()
    assert generation.wait_settled(2)
    assert recorded == ["complete"] and generation.saved

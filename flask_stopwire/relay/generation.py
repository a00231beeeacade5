"""The relay: one generation streamed from a provider to its viewers, stoppable at once.

Per viewer a handler greenlet and a watcher; per generation a pump greenlet while needed:

- the **pump** greenlet opens the provider stream. Once it is open, whoever relays
  reads it: the pump only while no viewer is attached (a grace), otherwise one
  viewer's handler (the **reader**). A stream a provider can pause (its parser
  passes "nothing ready yet" on: providers/http.py `SocketBody`) is read without
  blocking, so the reader's one wait covers the provider's socket, its heartbeat and
  a stop: a token goes from the socket to the client in one greenlet, with no
  hand-off, and the pump's stack is freed once the stream is open. Other streams are
  read by the pump to their end, waking the viewers as text arrives;
- a **viewer**'s handler greenlet iterates `Generation.events()` (a wire format
  encodes them and the server writes them): it sleeps until there is text it has not
  sent, the outcome is decided or a heartbeat is due, and sends everything that
  piled up meanwhile as one frame. Its events carry the character offset they end
  at, so a viewer that comes back (`after=`) gets exactly what it missed;
- a viewer's **watcher** (its socket in the worker's epoll set of clients, not a
  greenlet: relay/disconnect.py) sees its client's socket close.

When the last viewer leaves, the generation stops at once, unless it was given a
grace (`grace_s`): then it runs on that long for a viewer to come back, the pump
reading it.

A stop (the client left, or asked) decides the outcome and shuts the provider socket
down (the provider sees our FIN at once); the reader wakes to it, closes the
connection and records the outcome (`_finish`); before the provider has answered, a
kill lands in the pump's connect. The connection is closed by its reader: never by a
cross-greenlet `Response.close()`, which fails on a read in progress. A viewer's
`finally` closes its watcher before gunicorn reads the next keep-alive request.

Race rule: the first outcome decided wins. A stop that arrives after the provider's
final event was parsed reports `complete`; a stop before it reports `stopped`.
"""

import ipaddress
import logging
import math
import os
import secrets
import socket
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from typing import Any

import gevent
import gevent.event
import gevent.socket
import requests
from gevent.hub import Waiter, get_hub

from flask_stopwire.providers.base import (
    Delta,
    Message,
    Provider,
    ProviderDisconnected,
    ProviderError,
    ProviderTimeout,
    Usage,
)
from flask_stopwire.providers.http import SocketBody, iter_body, open_stream, socket_body
from flask_stopwire.relay import disconnect, priorities
from flask_stopwire.relay.turns import ENDS, in_turn, wait_turn

log = logging.getLogger(__name__)

_DRAIN_S = 1.0
_PUMP = "pump"  # the reader while no viewer reads
_LEASE_CHECK_S = 1.0  # how often a grace asks again whether a viewer elsewhere still reads


@dataclass(frozen=True)
class RelaySettings:
    """What a generation needs from the configuration."""

    heartbeat_s: float
    connect_timeout_s: float
    read_timeout_s: float
    api_key: str = ""


@dataclass(frozen=True)
class Outcome:
    """How a generation ended: status, reason and, for errors, what went wrong."""

    status: str  # complete | stopped | error | interrupted
    # user_stop | client_disconnect | shutdown | timeout | upstream_error | internal
    reason: str | None = None
    error: dict[str, str] | None = None


@dataclass(slots=True)  # one per frame: not frozen, whose __init__ costs five times more
class RelayEvent:
    """What the relay tells its client, before a wire format encodes it.

    kind: meta | token (data: the text) | keepalive | error | done;
    at: the number of characters of the answer sent once this event is (its id).
    """

    kind: str
    data: Any = None
    at: int = field(default=0, compare=False)  # where, not what: equal events may differ


class Viewer:
    """One client reading a generation: what it was sent, and its wake-up.

    `gone` once its client left; `waiter` while its handler sleeps and nobody has
    woken it yet (a wake-up takes it).
    """

    __slots__ = ("at", "chunks", "gone", "heartbeat_due", "last_sent", "timer", "waiter")

    def __init__(self, chunks: int, at: int):
        self.chunks = chunks  # how many received chunks it was sent
        self.at = at  # how many characters it was sent
        self.gone = False
        self.waiter: Waiter | None = None
        self.last_sent = time.monotonic()
        self.heartbeat_due = False
        self.timer: Any = None  # a hub timer while it relays

    def wake(self, lane: float | None = None) -> None:
        """Wake its handler if it sleeps (from any greenlet: the switch runs in the hub):
        at once or, given a lane, in its turn there (relay/turns.py)."""
        waiter = self.waiter
        if waiter is not None:
            self.waiter = None
            if lane is None:
                get_hub().loop.run_callback(waiter.switch, None)
            else:
                in_turn(lane, waiter)


_stepped_aside_in_turn = -1  # the loop turn that last yielded (one hub per worker)


def step_aside() -> None:
    """Yield the CPU, right after our FIN to a provider on this host (loopback).

    The FIN wakes the provider's process, and Linux tends to queue it on the waking CPU,
    ours, behind what we do next (recording the end: milliseconds), so a local model
    server would hear of the stop late (a remote one has the FIN already: no yield).
    Many stops in one loop turn yield once, so later FINs never wait behind a CPU-bound
    neighbour: clients leaving at once (a mass disconnect) once the departures being
    served have all sent theirs, other stops at the first.
    """
    if not disconnect.after_departures(_yield_once_in_turn):
        _yield_once_in_turn()


def _yield_once_in_turn() -> None:
    global _stepped_aside_in_turn
    turn = get_hub().loop.iteration
    if turn != _stepped_aside_in_turn:
        _stepped_aside_in_turn = turn
        os.sched_yield()


def on_this_host(sock: socket.socket | None) -> bool:
    """Whether a TCP socket's peer is a loopback address (asked once, when it opens)."""
    if getattr(sock, "family", None) not in (socket.AF_INET, socket.AF_INET6):
        return False  # a Unix socket, or no socket at all
    try:
        address = ipaddress.ip_address(sock.getpeername()[0].split("%")[0])
    except (OSError, ValueError):
        return False
    return (getattr(address, "ipv4_mapped", None) or address).is_loopback


def new_generation_id() -> str:
    """An unguessable id: 128 random bits."""
    return "gen_" + secrets.token_urlsafe(16)


class Generation:
    """One answer being relayed; `stream()` is the response body."""

    def __init__(
        self,
        provider: Provider,
        messages: list[Message],
        session: requests.Session,
        settings: RelaySettings,
        on_end: Callable[["Generation"], bool] | None = None,
        generation_id: str = "",
        options: dict[str, Any] | None = None,
        user_id: str = "",
        grace_s: float = 0.0,
    ):
        self.id = generation_id or new_generation_id()
        self.user_id = user_id  # only its owner may stop it
        self.meta: dict[str, Any] = {"generation_id": self.id}
        self.provider = provider
        self.messages = messages
        self.session = session
        self.settings = settings
        self.options = options
        self.on_end = on_end
        self.grace_s = grace_s  # how long it runs on with no viewer
        self.discard = False  # a stopped answer keeps no text (`on_stop: discard`)
        # Called by the pump right before the provider call (a stop recorded elsewhere).
        self.before_call: Callable[[Generation], None] | None = None
        # Called once, when it first runs on with no viewer (a grace): a mirror starts.
        self.on_unviewed: Callable[[Generation], None] | None = None
        # Asked when a grace runs out: does a viewer on another host read it now?
        self.viewed_elsewhere: Callable[[Generation], bool] | None = None
        self._viewed_elsewhere_last = False
        self.seen_chars: int | None = None
        self.settled = gevent.event.Event()  # the outcome is final and recorded
        self.saved = True  # False when recording the end failed (on_end said so)
        self.outcome: Outcome | None = None
        self.usage: Usage | None = None
        self.created_at = time.monotonic()
        self.first_token_at: float | None = None
        self.ended_at: float | None = None
        self.heartbeats = 0
        self.stop_at: float | None = None
        self.closed_at: float | None = None
        self.tokens_after_stop = 0
        # Every chunk of text the pump parsed before the outcome: each viewer sends
        # what it has not yet, waking from its own Waiter (no queue, no Timeout per wait).
        self._received: list[str] = []
        self._chars = 0
        self._viewers: list[Viewer] = []
        self._grace_timer: Any = None
        self._response: requests.Response | None = None
        self._provider_on_this_host = False  # its address is a loopback one (`step_aside`)
        self._pump = gevent.Greenlet(self._read_provider)
        self._pumping = False  # started
        self._pump_running = False  # and running: a kill would reach its `finally`
        # The open stream: its body's pieces, the deltas parsed from them and, for a
        # stream read without blocking, its socket body, the loop's watcher of that
        # socket, the loop's departures (asked before each token) and the idle-limit timer.
        # `_reader` is who reads it now.
        self._pieces: Iterator[bytes | None] | None = None
        self._deltas: Iterator[Delta | None] | None = None
        self._body: SocketBody | None = None
        self._io: Any = None
        self._departures: disconnect.Departures | None = None
        self._idle_timer: Any = None
        self._reader: Any = None  # _PUMP, a Viewer, or None
        self._pump_waiter: Waiter | None = None
        self._finished = False
        self._observed: gevent.event.Event | None = None  # set as text arrives (`observe`)

    # -- a viewer's handler greenlet ---------------------------------------------------

    def events(self, client_sock: Any = None, after: int | None = None) -> Iterator[RelayEvent]:
        """One viewer's events: meta, then tokens and keepalives, then error and done.

        `after` (characters a returning viewer already has) skips meta and the text it
        was sent. Everything starts and ends in here: a generator that is never
        iterated must not have spawned anything, as its `finally` would never run.
        """
        viewer = self._attach()
        missed = self.text()[after or 0 :]  # what it lacks of the text received so far
        watcher = None
        try:
            if client_sock is not None:
                # Two heartbeats unacknowledged: the client's network is gone.
                give_up_s = 2 * self.settings.heartbeat_s
                watcher = disconnect.watch(client_sock, lambda: self._leave(viewer), give_up_s)
            if not self._pumping:
                self._pumping = True
                self._pump.start()
            if after is None:
                yield RelayEvent("meta", self.meta)
            if missed:
                yield RelayEvent("token", missed, viewer.at)
            yield from self._relay_tokens(viewer)
            if not viewer.gone:
                yield from self._final_events(viewer)
        finally:
            if watcher is not None:
                watcher.close()
            # Still attached here means the server closed us after a failed write.
            self._leave(viewer)
            self._hand_over(viewer)
            if self.stop_at is not None:
                self.wait_settled(_DRAIN_S + 2)  # the provider is closed when we return

    def _attach(self) -> Viewer:
        viewer = Viewer(len(self._received), self._chars)
        self._viewers.append(viewer)
        self._viewed_elsewhere_last = False
        if self._grace_timer is not None:
            self._grace_timer.close()
            self._grace_timer = None
        return viewer

    def _leave(self, viewer: Viewer) -> None:
        """A viewer is gone; the last one to go stops the generation, after its grace."""
        if viewer.gone:
            return
        viewer.gone = True
        self._viewers.remove(viewer)
        try:
            if self._viewers or self.outcome is not None:
                return
            if self.grace_s <= 0:
                self.stop("client_disconnect")  # woken after it: a sleeping reader is not busy
                return
            self._start_grace(self.grace_s)
            if self.on_unviewed is not None:
                on_unviewed, self.on_unviewed = self.on_unviewed, None
                on_unviewed(self)
        finally:
            # Its client is gone: ending a stopped answer's response can wait its turn; if
            # the answer runs on (other viewers, a grace) it may be the reader: at once.
            viewer.wake(ENDS if self.outcome is not None else None)

    def _start_grace(self, seconds: float) -> None:
        if self._grace_timer is not None:
            self._grace_timer.close()
        timer = self._grace_timer = get_hub().loop.timer(seconds)
        # From the hub: the stop records the outcome, which may wait for the store.
        timer.start(gevent.spawn, self._grace_over, timer)

    def _grace_over(self, timer: Any) -> None:
        """The grace ran out: stop, unless a viewer on another host reads it now (then
        ask again soon; once it has left, a new grace starts)."""
        elsewhere = self.viewed_elsewhere is not None and self.viewed_elsewhere(self)
        if timer is not self._grace_timer or self.outcome is not None or self._viewers:
            return  # while we asked: decided, or a viewer came back (and maybe left again)
        if elsewhere:
            self._start_grace(_LEASE_CHECK_S)
        elif self._viewed_elsewhere_last:
            self._start_grace(self.grace_s)
        else:
            self.stop("client_disconnect")
        self._viewed_elsewhere_last = elsewhere

    def _relay_tokens(self, viewer: Viewer) -> Iterator[RelayEvent]:
        """Tokens (what piled up, as one event) and keepalives until the outcome is decided
        or the viewer left.

        Text parsed before the outcome was decided always goes out before the end.
        """
        hub = get_hub()
        viewer.last_sent = time.monotonic()
        self._arm_heartbeat(viewer, self.settings.heartbeat_s)
        try:
            while not viewer.gone:
                if viewer.chunks < len(self._received):
                    texts = self._received[viewer.chunks :]
                    viewer.chunks += len(texts)
                    text = texts[0] if len(texts) == 1 else "".join(texts)
                    viewer.at += len(text)
                    viewer.last_sent = time.monotonic()
                    yield RelayEvent("token", text, viewer.at)
                elif self.outcome is not None:
                    if self._claim(viewer):
                        self._finish_apart()  # its reader closes the stream, records the end
                    return
                elif viewer.heartbeat_due:
                    viewer.heartbeat_due = False
                    self.heartbeats += 1
                    viewer.last_sent = time.monotonic()
                    yield RelayEvent("keepalive", None, viewer.at)
                elif self._reader is viewer or self._claim(viewer):  # the reader: no call
                    # A body waiting for its socket has nothing parsed left: straight to sleep.
                    if self._body.waiting or not self._read_ready():  # type: ignore[union-attr]
                        self._io.start(self._readable)
                        self._sleep(hub, viewer)
                else:
                    self._sleep(hub, viewer)
        finally:
            if viewer.timer is not None:
                viewer.timer.close()
                viewer.timer = None

    def _sleep(self, hub: Any, viewer: Viewer) -> None:
        """Until woken: text, an outcome, a heartbeat, its client gone or, once it is
        the reader, the provider's socket readable."""
        viewer.waiter = waiter = Waiter(hub)
        try:
            waiter.get()
        finally:
            viewer.waiter = None
            if self._io is not None and self._reader is viewer:
                self._io.stop()

    def _readable(self) -> None:
        """In the hub: the provider's socket has bytes (or its end): wake its reader
        straight from the loop (no callback queued behind the other greenlets)."""
        assert self._body is not None and self._departures is not None
        self._departures.ask_if_due()  # before this token, if the turn is long
        self._io.stop()
        self._body.waiting = False
        reader = self._reader
        if reader is _PUMP:
            waiter, self._pump_waiter = self._pump_waiter, None
        elif reader is not None:
            waiter, reader.waiter = reader.waiter, None
        else:
            waiter = None
        if waiter is not None:
            waiter.switch(None)

    def _arm_heartbeat(self, viewer: Viewer, after_s: float) -> None:
        if viewer.timer is not None:
            viewer.timer.close()
        viewer.timer = get_hub().loop.timer(max(after_s, 0.0))
        viewer.timer.start(self._heartbeat_check, viewer)

    def _heartbeat_check(self, viewer: Viewer) -> None:
        """In the hub: a keepalive is due once nothing was sent for a whole heartbeat.

        Otherwise the timer is set again for the rest of that heartbeat: a stream of
        tokens costs one timer event per heartbeat instead of a Timeout per wait.
        """
        heartbeat_s = self.settings.heartbeat_s
        idle = time.monotonic() - viewer.last_sent
        if idle >= heartbeat_s:
            viewer.heartbeat_due = True
            viewer.wake()
            idle = 0.0
        self._arm_heartbeat(viewer, heartbeat_s - idle)

    def _wake(self) -> None:
        for viewer in self._viewers:
            viewer.wake()
        if self._observed is not None:
            self._observed.set()
        waiter = self._pump_waiter
        if waiter is not None:
            self._pump_waiter = None
            get_hub().loop.run_callback(waiter.switch, None)

    def _final_events(self, viewer: Viewer) -> Iterator[RelayEvent]:
        outcome = self.outcome
        assert outcome is not None  # _relay_tokens returns only once an outcome is decided
        self.settled.wait()  # recorded (by the pump, as it ends) before the client hears
        if outcome.error is not None:
            yield RelayEvent("error", outcome.error, viewer.at)
        yield RelayEvent("done", self.summary(), viewer.at)

    def summary(self) -> dict[str, Any]:
        """The `done` event: status, reason, usage and, for a stop, its receipt."""
        outcome = self.outcome or Outcome("streaming")
        summary: dict[str, Any] = {
            **self.meta,
            "status": outcome.status,
            "reason": outcome.reason,
            "usage": self._usage().as_dict(),
        }
        if self.stop_at is not None and outcome.status in ("stopped", "interrupted"):
            summary["receipt"] = self.receipt()
        if not self.saved:
            summary["saved"] = False  # the client must not believe it was kept
        return summary

    def receipt(self) -> dict[str, Any]:
        """What the server measured about a stop."""
        assert self.stop_at is not None
        closed_at = self.closed_at if self.closed_at is not None else self.stop_at
        receipt = {
            "signal": self.outcome.reason if self.outcome else None,
            "stop_to_close_ms": round(max(0.0, closed_at - self.stop_at) * 1000, 3),
            "tokens_after_stop": self.tokens_after_stop,
        }
        if self.discard:
            receipt["discarded"] = True  # its text was generated, then dropped as asked
        return receipt

    def _usage(self) -> Usage:
        if self.usage is not None and self.outcome and self.outcome.status == "complete":
            return self.usage
        # Stopped or failed early: count what was delivered (about 4 characters a token).
        prompt_chars = sum(len(m.content) for m in self.messages)
        reported_prompt = self.usage.prompt_tokens if self.usage else None
        prompt = reported_prompt if reported_prompt else math.ceil(prompt_chars / 4)
        return Usage(prompt, self.delivered_tokens, estimated=True)

    def observe(self) -> Iterator[tuple[int, str]]:
        """The text as it arrives, until the outcome is decided: (characters so far, the
        new piece). For a mirror, which is no viewer: it neither reads nor holds a grace."""
        signal = self._observed = gevent.event.Event()
        chunks = at = 0
        while True:
            if chunks < len(self._received):
                piece = "".join(self._received[chunks:])
                chunks = len(self._received)
                at += len(piece)
                yield at, piece
            elif self.outcome is not None:
                return
            else:
                signal.clear()
                signal.wait()

    @property
    def delivered_tokens(self) -> int:
        """Chunks of text received before the outcome: every one goes out to the viewers."""
        return len(self._received)

    def text(self) -> str:
        """Everything the provider said before the outcome was decided."""
        return "".join(self._received)

    # -- stopping (any greenlet) ----------------------------------------------------

    def stop(self, reason: str, status: str = "stopped", seen_chars: int | None = None) -> Outcome:
        """Stop now unless already decided; returns the outcome that stands.

        `seen_chars` is how much of the text the user saw, which is what gets kept.
        """
        if self.outcome is None:
            self.stop_at = time.monotonic()
            self.seen_chars = seen_chars
            reader = self._reader
            busy = isinstance(reader, Viewer) and reader.waiter is None  # before it is woken
            self._decide(Outcome(status, reason))
            if not self._pumping:
                self._settle()  # stopped before anyone viewed it: nothing to close
            elif self._hang_up():
                if busy and not self._finished:
                    # Its reader is stuck writing to its client (or about to run): the
                    # outcome is recorded now, not once that write ends. It is never
                    # inside a read (`_read_ready` never switches), so that is safe.
                    gevent.spawn(self._finish)
            elif self._pump_running:
                self._pump.kill(block=False)  # no socket yet: stop it connecting
            # else the pump has not run yet, or waits its turn: it sees the outcome
            # first thing, and finishes
        return self.outcome  # type: ignore[return-value]

    def kept_text(self) -> str:
        """The answer as it should be saved: what the user saw of it, if they said."""
        if self.discard and self.outcome is not None and self.outcome.status != "complete":
            return ""
        text = self.text()
        return text if self.seen_chars is None else text[: self.seen_chars]

    def _hang_up(self) -> bool:
        """Send the provider our FIN now, from whichever greenlet is stopping; False
        when there is no socket to shut down yet (before the response headers).

        Only a socket shutdown, never a cross-greenlet `Response.close()`: the pump's
        blocked read wakes to the end of the stream and the pump closes the connection
        itself, then records the outcome. It is not killed: a kill landing once it is
        already unwinding would interrupt that record on a database that waits. With
        many stops at once (a mass disconnect) each provider hears of its stop without
        waiting for the pumps to unwind in turn.
        """
        sock = self._provider_socket()
        if sock is None:
            return False
        try:
            sock.shutdown(socket.SHUT_RDWR)
        except OSError:
            return True  # already closed: the pump is ending
        self.closed_at = time.monotonic()
        if self._provider_on_this_host:
            step_aside()
        return True

    def _provider_socket(self) -> socket.socket | None:
        connection = self._response.raw.connection if self._response is not None else None
        return connection.sock if connection is not None else None

    def wait_settled(self, timeout: float) -> bool:
        """Wait until the outcome is final and recorded; False on timeout."""
        return self.settled.wait(timeout)

    def _settle(self) -> None:
        if self.settled.is_set():
            return
        self.ended_at = time.monotonic()
        try:
            if self.on_end is not None:
                self.saved = self.on_end(self)
        except Exception:
            self.saved = False
            log.exception("recording the end of generation %s failed", self.id)
        finally:
            self.settled.set()

    def _decide(self, outcome: Outcome) -> None:
        if self.outcome is None:
            self.outcome = outcome
            if self._grace_timer is not None:
                self._grace_timer.close()
                self._grace_timer = None
            self._wake()

    # -- reading the provider: the pump, or the viewer that is its reader --------------

    def _read_provider(self) -> None:
        """The pump greenlet: open the provider's stream, then read it while no viewer does."""
        # Behind the tokens of the answers already streaming (relay/turns.py). Not yet
        # "running": a stop meanwhile is not a kill, which, landing before the `try`,
        # would skip the `finally` and leave the answer unsettled.
        wait_turn()
        self._pump_running = True  # from now on a kill lands in here, and `finally` runs
        handed_over = False
        try:
            if self._open():
                handed_over = self._read_on()
        except ProviderError as exc:
            self._fail(exc)
        except Exception:
            self._fail_unexpectedly()
        finally:
            if not handed_over:
                self._finish_apart()  # a stop that kills the pump must not land in it

    def _open(self) -> bool:
        """Ask the provider for the stream; False if stopped before that."""
        if self.outcome is not None:
            return False  # stopped before the pump ran, or while it waited its turn
        if self.before_call is not None:
            self.before_call(self)
            if self.outcome is not None:
                return False  # stopped before it asked the provider anything
        call = self.provider.build_call(self.messages, self.options)
        timeouts = (self.settings.connect_timeout_s, self.settings.read_timeout_s)
        response = self._response = open_stream(self.session, call, timeouts, self.settings.api_key)
        self._provider_on_this_host = on_this_host(self._provider_socket())
        body = socket_body(response) if getattr(self.provider, "pauses", False) else None
        self._pieces = body.pieces if body is not None else iter_body(response)
        self._deltas = self.provider.parse(self._pieces)
        if body is not None:
            self._body = body
            # 1: readable. Before the turn's new work: a burst's starts do not hold the tokens.
            self._io = get_hub().loop.io(body.sock.fileno(), 1, priority=priorities.TOKENS)
            # Looked up once, not per token (a lookup by hub costs more than the ask).
            self._departures = disconnect.departures()
            self._arm_idle_check(self.settings.read_timeout_s)
        self._reader = _PUMP
        return True

    def _read_on(self) -> bool:
        """In a pump: read until the outcome, or True once a viewer can read instead.

        A stream that cannot pause is read here to its end.
        """
        while self.outcome is None:
            if self._viewers and self._io is not None:
                self._hand_to(self._viewers[0])
                return True
            if not self._read_ready():
                self._pump_sleep()
        return False

    def _hand_to(self, viewer: Viewer) -> None:
        """Make a viewer the reader: no hand-off between greenlets per token from now on.

        One that sleeps is woken from the loop's next turn (a timer, not a callback: on
        a busy worker the callback queue holds every new chat's start) to read what the
        pump left unread, bytes that came with the headers included.
        """
        self._reader = viewer
        if viewer.waiter is not None:
            timer = get_hub().loop.timer(0)
            timer.start(self._wake_reader, timer)

    def _wake_reader(self, timer: Any) -> None:
        timer.close()
        if self._io is not None:
            self._readable()

    def _pump_on(self) -> None:
        """A pump started once the last viewer left within its grace."""
        if not self._read_on():
            self._finish()

    def _pump_sleep(self) -> None:
        self._pump_waiter = waiter = Waiter(get_hub())
        self._io.start(self._readable)
        try:
            waiter.get()
        finally:
            self._pump_waiter = None
            if self._io is not None:
                self._io.stop()

    def _claim(self, viewer: Viewer) -> bool:
        """True if this viewer reads the provider's stream (claiming it if nobody does)."""
        if self._io is None or self._finished:
            return False
        if self._reader is None:
            self._reader = viewer
        return self._reader is viewer

    def _hand_over(self, viewer: Viewer) -> None:
        """A viewer is done: if nobody reads the stream now, finish it or let someone read."""
        if self._reader is viewer:
            self._reader = None
        if self._reader is not None or self._io is None or self._finished:
            return
        if self.outcome is not None:
            self._finish_apart()
        elif self._viewers:
            self._wake()  # one of them claims it
        else:
            self._reader = _PUMP  # runs on through its grace
            gevent.spawn(self._pump_on)

    def _read_ready(self) -> bool:
        """Take what the provider sent that is ready: False if there was nothing."""
        assert self._deltas is not None
        took = False
        try:
            for delta in self._deltas:
                if delta is None:
                    return took  # nothing more until its socket is readable
                took = True
                self._take(delta)
                if delta.finished:
                    self._decide(Outcome("complete"))
                    return True
            raise ProviderDisconnected("the provider ended the stream before the answer was done")
        except ProviderError as exc:
            self._fail(exc)
        except Exception:
            self._fail_unexpectedly()
        return True

    def _fail(self, exc: ProviderError) -> None:
        if self.outcome is not None:
            return  # our own stop cut the read: nothing failed
        reason = "timeout" if isinstance(exc, ProviderTimeout) else "upstream_error"
        log.warning("generation %s failed: %s (%s)", self.id, exc.type, exc)
        self._decide(Outcome("error", reason, {"type": exc.type, "message": str(exc)}))

    def _fail_unexpectedly(self) -> None:
        log.exception("generation %s failed unexpectedly", self.id)
        error = {"type": "internal_error", "message": "internal error; see the server log"}
        self._decide(Outcome("error", "internal", error))

    def _arm_idle_check(self, after_s: float) -> None:
        if self._idle_timer is not None:
            self._idle_timer.close()
        self._idle_timer = get_hub().loop.timer(max(after_s, 0.0))
        self._idle_timer.start(self._idle_check)

    def _idle_check(self) -> None:
        """In the hub: the provider's idle limit, kept here for a socket that never blocks
        (re-armed once per limit, not per read)."""
        assert self._body is not None
        limit = self.settings.read_timeout_s
        idle = time.monotonic() - self._body.last_data_at
        if idle < limit:
            self._arm_idle_check(limit - idle)
        else:
            self._fail(ProviderTimeout("provider went silent past the idle limit"))

    def _finish_apart(self) -> None:
        """`_finish` in a greenlet of its own, waited for. A kill of the pump (a stop
        before the provider answered) or of a viewer's greenlet (a WebSocket ending its
        answers) must not land in the record, nor in its wait for a turn."""
        if not self._finished:
            gevent.spawn(self._finish).join()

    def _finish(self) -> None:
        """Close the provider's stream and record the outcome: once, by its last reader.

        Once a stop sent the provider our FIN, the rest waits its turn (relay/turns.py),
        so that many stops at once each send theirs first.
        """
        if self._finished:
            return
        self._finished = True
        self._reader = None
        if self._io is not None:
            self._io.close()  # before its socket closes
            self._io = None
        if self._idle_timer is not None:
            self._idle_timer.close()
            self._idle_timer = None
        if self.closed_at is not None:  # set by `_hang_up` only, so far: the FIN is out
            wait_turn(ENDS)
        try:
            self._close_response()
        except Exception:  # the end is recorded all the same: its viewers wait for that
            log.exception("closing the provider stream of generation %s failed", self.id)
        if self.closed_at is None:
            self.closed_at = time.monotonic()
        self._settle()

    def _close_response(self) -> None:
        response = self._response
        if response is None:
            return
        if self.outcome is not None and self.outcome.status == "complete":
            self._settle()  # the viewers hear the end now, not after the drain
            if self._body is None:
                _drain_and_close(response, self._pieces)
            else:  # by now the reader may be a viewer: it must not wait here
                gevent.spawn(_drain_and_close, response, self._pieces, self._body)
        else:
            _close(response)

    def _take(self, delta: Delta) -> None:
        if delta.usage is not None:
            self.usage = delta.usage
        if not delta.text:
            return
        if self.stop_at is not None:
            self.tokens_after_stop += 1  # arrived after the stop: counted, never sent
        else:
            if self.first_token_at is None:
                self.first_token_at = time.monotonic()
            self._received.append(delta.text)
            self._chars += len(delta.text)
            self._wake()


def _drain_and_close(
    response: requests.Response, pieces: Any, body: SocketBody | None = None
) -> None:
    """Read the little that follows the final event so the connection can be pooled,
    then close the response (a connection handed back to the pool stays open).

    Through the same reader as the rest of the body: it may hold bytes already read.
    """
    with gevent.Timeout(_DRAIN_S, False):
        try:
            for piece in pieces:
                if piece is None:  # a socket body with nothing ready
                    assert body is not None
                    gevent.socket.wait_read(body.sock.fileno())
                    body.waiting = False
        except ProviderError:
            pass  # cut after the final event: nothing to pool
        else:
            response.raw.drain_conn()
    _close(response)


def _close(response: requests.Response) -> None:
    # Read to its end, requests' close() would skip the body: close it here.
    response.raw.close()
    response.close()

"""`web.websocket._ReaderSignal` and `Channel.cancel_at_once`, pure units: simple-websocket's
reader sets its `event` for every message and once the socket closed; the answers hear of
the close once, a cancel of an answer on this worker stops it from the reader, and
`receive()` is woken whatever acting on them did."""

import socket
import threading
from types import SimpleNamespace

import pytest

from flask_stopwire.web.websocket import Channel, _ReaderSignal


class ReaderState:
    """What `_ReaderSignal` and `Channel` read of simple-websocket's `Server`."""

    def __init__(self) -> None:
        self.event = threading.Event()
        self.connected = True
        self.input_buffer: list[str | bytes] = []
        self.sock, self._peer = socket.socketpair()  # a Unix socket: no TCP options to set

    def close(self) -> None:
        self.sock.close()
        self._peer.close()

    def message(self, raw: str | bytes) -> None:
        """What the reader does with a message it parsed."""
        self.input_buffer.append(raw)
        self.event.set()


class Answer:
    """A generation as the reader's cancel sees it."""

    def __init__(self, user_id: str) -> None:
        self.user_id = user_id
        self.stops: list[tuple[str, int | None]] = []

    def stop(self, reason: str, seen_chars: int | None = None) -> None:
        self.stops.append((reason, seen_chars))


class Registry:
    def __init__(self, answers: dict[str, Answer]) -> None:
        self.answers = answers

    def live(self, user_id: str, generation_id: str) -> Answer | None:
        answer = self.answers.get(generation_id)
        return answer if answer is not None and answer.user_id == user_id else None


@pytest.fixture
def ws():
    state = ReaderState()
    yield state
    state.close()


def channel_of(ws: ReaderState, answers: dict[str, Answer]) -> Channel:
    settings = SimpleNamespace(heartbeat_s=15.0, max_body_bytes=1000)
    stopwire = SimpleNamespace(settings=settings, registry=Registry(answers))
    return Channel(ws, stopwire, "alice", "alice")  # type: ignore[arg-type]


def test_the_answers_hear_of_the_close_once_and_of_each_message(ws: ReaderState) -> None:
    heard: list[object] = []
    signal = _ReaderSignal(ws, lambda: heard.append("closed"), heard.append)
    ws.event = signal
    ws.message("one")
    ws.message("two")
    assert heard == ["one", "two"] and ws.event.is_set()  # its own methods pass through
    ws.connected = False
    signal.set()
    signal.set()
    assert heard == ["one", "two", "closed"]


def test_receive_is_woken_even_when_acting_on_a_message_fails(ws: ReaderState) -> None:
    def failing(_: object = None) -> None:
        raise RuntimeError("a viewer's stop failed")

    real_event = ws.event
    ws.event = _ReaderSignal(ws, failing, failing)
    with pytest.raises(RuntimeError):
        ws.message("one")
    assert real_event.is_set()  # else the handler's receive() would wait for ever
    real_event.clear()
    ws.connected = False
    with pytest.raises(RuntimeError):
        ws.event.set()
    assert real_event.is_set()


def test_the_reader_stops_a_cancelled_answer_at_once(ws: ReaderState) -> None:
    answer = Answer("alice")
    channel_of(ws, {"gen_1": answer})
    cancel = '{"type": "cancel", "generation_id": "gen_1", "seen_chars": 3}'
    ws.message(cancel)
    assert answer.stops == [("user_stop", 3)]
    assert ws.input_buffer == [cancel]  # still there for the handler to answer


@pytest.mark.parametrize(
    "raw",
    [
        '{"type": "cancel", "generation_id": "gen_bob"}',  # someone else's answer
        '{"type": "cancel", "generation_id": "gen_none"}',  # not on this worker
        '{"type": "cancel", "generation_id": "gen_1", "seen_chars": -1}',
        '{"type": "cancel", "generation_id": 7}',
        '{"type": "cancel"',
        '{"type": "prompt", "content": "say \\"cancel\\""}',
        b'{"type": "cancel", "generation_id": "gen_1"}',  # a binary message: the handler's
        '{"type": "cancel", "generation_id": "gen_1", "pad": "' + "x" * 2000 + '"}',  # too big
    ],
)
def test_the_reader_leaves_every_other_message_to_the_handler(
    ws: ReaderState, raw: str | bytes
) -> None:
    answers = {"gen_1": Answer("alice"), "gen_bob": Answer("bob")}
    channel_of(ws, answers)
    ws.message(raw)
    assert [a.stops for a in answers.values()] == [[], []]
    assert ws.input_buffer == [raw] and ws.event.is_set()

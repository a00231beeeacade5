"""`web.websocket._ClosedSignal`, a pure unit: simple-websocket's reader sets its `event`
for every message and once the socket closed; the answers hear of the close once, and
`receive()` is woken whatever telling them did."""

import threading

import pytest

from flask_stopwire.web.websocket import _ClosedSignal


class ReaderState:
    """What `_ClosedSignal` reads of simple-websocket's `Server`."""

    def __init__(self) -> None:
        self.event = threading.Event()
        self.connected = True


def test_the_answers_hear_of_the_close_once_and_not_of_messages() -> None:
    ws = ReaderState()
    heard: list[str] = []
    signal = _ClosedSignal(ws, lambda: heard.append("closed"))
    signal.set()  # a message arrived
    assert heard == [] and ws.event.is_set()
    ws.event.clear()
    ws.connected = False
    signal.set()
    signal.set()
    assert heard == ["closed"] and signal.is_set()  # the event's own methods pass through


def test_receive_is_woken_even_when_telling_the_answers_fails() -> None:
    ws = ReaderState()
    ws.connected = False

    def failing() -> None:
        raise RuntimeError("a viewer's stop failed")

    with pytest.raises(RuntimeError):
        _ClosedSignal(ws, failing).set()
    assert ws.event.is_set()  # else the handler's receive() would wait for ever

"""`Peers` in one process: the stop socket, asking it, and sockets of dead workers.

Peers keys its socket by pid, so two workers cannot live in one test process; a sibling
is played by renaming a served socket. Asking is blocking socket I/O (gunicorn's workers
are monkey-patched, this process is not), so it runs on a real thread while the hub serves.
"""

import os
import socket
import stat
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import gevent
import pytest

from flask_stopwire.relay import peers
from flask_stopwire.relay.peers import Peers

SUMMARY = {"generation_id": "gen_1", "status": "stopped", "reason": "user_stop"}


class StopLocal:
    """A worker's local stop: knows one (user, id) pair and records every call."""

    def __init__(self) -> None:
        self.calls: list[tuple[str, str, int | None]] = []

    def __call__(self, user_id: str, generation_id: str, seen_chars: int | None) -> Any:
        self.calls.append((user_id, generation_id, seen_chars))
        return SUMMARY if (user_id, generation_id) == ("alice", "gen_1") else None


def on_thread(fn: Any, *args: Any) -> Any:
    """Run blocking `fn(*args)` on a real thread; this greenlet waits, the hub serves."""
    return gevent.get_hub().threadpool.apply(fn, args)


def dead_socket(path: Path) -> Path:
    """A socket file nobody listens on: what a killed worker leaves behind."""
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    sock.bind(str(path))
    sock.close()
    return path


@pytest.fixture
def stop_local() -> StopLocal:
    """A fresh recording local stop."""
    return StopLocal()


@pytest.fixture
def served(tmp_path: Path, stop_local: StopLocal) -> Iterator[Peers]:
    """A Peers serving its stop socket in tmp_path/run; closed after."""
    worker = Peers(str(tmp_path / "run"), stop_local)
    worker.serve()
    # A blocking listener would hang this test's event loop in accept() at the first
    # connection, where no timeout can fire: fail here instead.
    assert worker._server is not None and not worker._server.socket.getblocking()
    yield worker
    worker.close()


def test_serving_makes_a_private_socket_and_close_removes_it(served: Peers) -> None:
    assert served.own_path == served.run_dir / f"worker-{os.getpid()}.sock"
    assert stat.S_ISSOCK(served.own_path.stat().st_mode)
    assert stat.S_IMODE(served.run_dir.stat().st_mode) == 0o700
    served.serve()  # once per process
    served.close()
    assert not served.own_path.exists()
    served.close()  # twice is fine


def test_a_served_socket_answers_a_stop(served: Peers, stop_local: StopLocal) -> None:
    request = {"op": "stop", "id": "gen_1", "user_id": "alice", "seen_chars": 5}
    assert on_thread(peers._ask, served.own_path, request) == {"found": True, "summary": SUMMARY}
    request = {"op": "stop", "id": "gen_1", "user_id": "bob", "seen_chars": None}
    assert on_thread(peers._ask, served.own_path, request) == {"found": False, "summary": None}
    assert stop_local.calls == [("alice", "gen_1", 5), ("bob", "gen_1", None)]


def test_a_malformed_request_gets_no_answer_and_the_socket_serves_on(
    served: Peers, stop_local: StopLocal
) -> None:
    assert on_thread(peers._ask, served.own_path, {"op": "stop"}) is None  # no id
    request = {"op": "stop", "id": "gen_1", "user_id": "alice", "seen_chars": "5"}
    assert on_thread(peers._ask, served.own_path, request)["found"] is True
    assert stop_local.calls == [("alice", "gen_1", None)]  # a non-integer is no seen_chars


def test_asking_a_dead_socket_removes_it(tmp_path: Path) -> None:
    path = dead_socket(tmp_path / "worker-1.sock")
    assert peers._ask(path, {"op": "stop", "id": "gen_1"}) is None
    assert not path.exists()
    assert peers._ask(path, {"op": "stop", "id": "gen_1"}) is None  # already gone: no error


def test_a_stop_reaches_a_sibling(tmp_path: Path, served: Peers, stop_local: StopLocal) -> None:
    served.own_path.rename(served.run_dir / "worker-1.sock")  # now it is a sibling's
    other = Peers(str(served.run_dir), StopLocal())
    assert on_thread(other.stop_elsewhere, "alice", "gen_1", 3) == SUMMARY
    assert on_thread(other.stop_elsewhere, "bob", "gen_1", None) is None
    assert stop_local.calls == [("alice", "gen_1", 3), ("bob", "gen_1", None)]


def test_a_worker_never_asks_itself_and_drops_dead_siblings(
    served: Peers, stop_local: StopLocal
) -> None:
    dead = dead_socket(served.run_dir / "worker-1.sock")
    assert on_thread(served.stop_elsewhere, "alice", "gen_1", None) is None
    assert stop_local.calls == []
    assert not dead.exists() and served.own_path.exists()


def test_no_run_dir_means_no_siblings(tmp_path: Path, stop_local: StopLocal) -> None:
    assert Peers(str(tmp_path / "absent"), stop_local).stop_elsewhere("alice", "gen_1", 1) is None

"""The wire in-process: Nagle, handshake bounds, refused peers, stock clients."""

from __future__ import annotations

import logging
import socket
import statistics
import time
from collections.abc import Iterator
from typing import Any

import pytest

from taskfleet.errors import AuthkeyRejected
from taskfleet.manager import BoardManager, Session, TaskfleetServer
from tests.waiting import wait_for

KEY = b"k" * 40


class Echo:
    def echo(self, payload: Any) -> Any:
        return payload

    def ping(self) -> str:
        return "pong"


class Served:
    def __init__(self, log: logging.Logger, **kw: Any) -> None:
        self.board = Echo()
        self.server = TaskfleetServer(self.get, ("echo", "ping"), ("127.0.0.1", 0), KEY, log, **kw)
        self.address: tuple[str, int] = self.server.address
        self.server.start()

    def get(self) -> Echo:
        return self.board


@pytest.fixture
def served(caplog: pytest.LogCaptureFixture) -> Iterator[Served]:
    caplog.set_level(logging.INFO, logger="taskfleet.test")
    s = Served(logging.getLogger("taskfleet.test"), handshake_timeout=0.5, max_unauthenticated=8)
    try:
        yield s
    finally:
        s.server.stop()


@pytest.mark.parametrize("size", [1_000, 5_000, 10_000, 50_000])
def test_no_nagle_stall_for_any_batch_size(served: Served, size: int) -> None:
    """Messages above 16 KB go out as two writes; without TCP_NODELAY on both
    ends each round trip then waits for a delayed ACK (40-90 ms)."""
    session = Session(served.address, KEY, "t", timeout=5)
    payload = list(range(10**9, 10**9 + size))  # about 5 bytes per pickled int
    times = []
    for _ in range(15):
        t0 = time.perf_counter()
        assert session.call("echo", payload) == payload
        times.append(time.perf_counter() - t0)
    session.close()
    assert statistics.median(times) < 0.02, (
        f"median round trip {statistics.median(times) * 1000:.1f} ms"
    )


def wait_for_log(caplog: pytest.LogCaptureFixture, predicate: Any, timeout: float = 5) -> str:
    """The first log message matching ``predicate`` (the server logs after closing)."""
    return wait_for(
        "the log line",
        lambda: next((m for r in caplog.records if predicate(m := r.getMessage())), ""),
        timeout=timeout,
        interval=0.05,
        detail=lambda: [r.getMessage() for r in caplog.records],
    )


def test_silent_connection_is_dropped_at_the_handshake_deadline(
    served: Served, caplog: pytest.LogCaptureFixture
) -> None:
    with socket.create_connection(served.address, timeout=5) as s:
        t0 = time.monotonic()
        s.recv(1024)  # the challenge
        assert s.recv(1024) == b"", "closed by the master"
        assert time.monotonic() - t0 < 3
    wait_for_log(caplog, lambda m: m.endswith(": handshake not finished within 0.5s"))


def test_a_peer_trickling_a_byte_at_a_time_is_cut_at_the_same_deadline(
    served: Served, caplog: pytest.LogCaptureFixture
) -> None:
    """The old limit was per read: a byte every few seconds held a slot for minutes."""
    with socket.create_connection(served.address, timeout=5) as s:
        t0 = time.monotonic()
        s.recv(1024)
        s.sendall(b"\x00\x00\x00\x40")  # an answer of 64 bytes follows... one at a time
        s.settimeout(0.1)
        closed = False
        for _ in range(40):  # 4 s at most
            try:
                s.send(b"\x00")
                closed = s.recv(1024) == b""
            except TimeoutError:
                continue
            except OSError:
                closed = True
            if closed:
                break
        took = time.monotonic() - t0
    assert closed and took < 1.5, took
    wait_for_log(caplog, lambda m: "handshake not finished within 0.5s" in m)


def test_unauthenticated_connections_are_capped(
    served: Served, caplog: pytest.LogCaptureFixture
) -> None:
    idle = [socket.create_connection(served.address, timeout=5) for _ in range(8)]
    try:
        time.sleep(0.1)
        with socket.create_connection(served.address, timeout=5) as extra:
            assert extra.recv(1024) == b"", "the 9th is closed at once"
        # an authenticated client still gets through once the idle ones time out
        session = Session(served.address, KEY, "t", timeout=5, give_up=10)
        assert session.call("ping") == "pong"
        session.close()
    finally:
        for s in idle:
            s.close()
    wait_for_log(caplog, lambda m: "too many unauthenticated connections (8)" in m)


def test_wrong_key_is_refused_and_logged_without_a_traceback(
    served: Served, caplog: pytest.LogCaptureFixture
) -> None:
    session = Session(served.address, b"x" * 40, "t", timeout=5)
    with pytest.raises(AuthkeyRejected):
        session.call("ping")
    # The server thread logs after the client has already given up: wait for it.
    wait_for_log(
        caplog, lambda m: m.startswith("refused 127.0.0.1:") and m.endswith(": wrong authkey")
    )


def test_garbage_gets_no_traceback(served: Served) -> None:
    with socket.create_connection(served.address, timeout=5) as s:
        s.recv(1024)
        s.sendall(b"\x00\x00\x00\x10" + b"A" * 16)
        data = b""
        while chunk := s.recv(4096):
            data += chunk
    assert b"Traceback" not in data and b"File " not in data


def test_stock_basemanager_clients_can_use_the_board(served: Served) -> None:
    m = BoardManager(address=served.address, authkey=KEY)
    m.connect()
    board = m.get_board()  # type: ignore[attr-defined]
    assert board.ping() == "pong"
    assert board.echo([1, 2]) == [1, 2]

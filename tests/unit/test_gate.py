"""The handshake guards: per-source caps, one deadline for the whole handshake, and a
refusal log that a flood cannot flood."""

from __future__ import annotations

import logging
import socket
import threading
import time

import pytest

from taskfleet.gate import Deadlines, HandshakeGate, RefusalLog


def test_one_source_cannot_take_the_slots_of_the_others() -> None:
    gate = HandshakeGate(total=5, per_source=2)
    assert gate.admit("10.0.0.1") is None and gate.admit("10.0.0.1") is None
    assert gate.admit("10.0.0.1") == "too many unauthenticated connections from this address (2)"
    for _ in range(3):
        assert gate.admit(f"10.0.0.{_ + 2}") is None
    assert gate.admit("10.0.0.9") == "too many unauthenticated connections (5)"
    gate.release("10.0.0.1")
    assert gate.pending("10.0.0.1") == 1 and gate.pending() == 4
    assert gate.admit("10.0.0.1") is None


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


def test_refusals_are_logged_once_per_source_per_interval_with_counts(
    caplog: pytest.LogCaptureFixture,
) -> None:
    caplog.set_level(logging.WARNING, logger="taskfleet.t")
    clock = Clock()
    refusals = RefusalLog(logging.getLogger("taskfleet.t"), interval=10, clock=clock)
    refusals.refuse("10.0.0.5", "10.0.0.5:4000", "wrong authkey")
    for i in range(847):
        refusals.refuse("10.0.0.5", f"10.0.0.5:{4001 + i}", "wrong authkey" if i % 2 else "x")
    refusals.refuse("10.0.0.6", "10.0.0.6:1", "wrong authkey")
    clock.now += 5
    refusals.flush()
    assert [r.getMessage() for r in caplog.records] == [
        "refused 10.0.0.5:4000: wrong authkey",
        "refused 10.0.0.6:1: wrong authkey",
    ]
    clock.now += 5
    refusals.flush()
    assert caplog.records[-1].getMessage() == (
        "refused 10.0.0.5: 847 more in the last 10s (x: 424, wrong authkey: 423)"
    )
    assert len(caplog.records) == 3  # 10.0.0.6 had nothing more to say
    # Still refusing: counted into the next interval, no line before it ends.
    refusals.refuse("10.0.0.5", "10.0.0.5:9", "wrong authkey")
    assert len(caplog.records) == 3
    clock.now += 20
    refusals.flush()
    refusals.flush()
    assert caplog.records[-1].getMessage() == (
        "refused 10.0.0.5: 1 more in the last 20s (wrong authkey: 1)"
    )
    # Quiet for a whole interval: the next refusal is logged at once again.
    clock.now += 11
    refusals.flush()
    refusals.refuse("10.0.0.5", "10.0.0.5:10", "wrong authkey")
    assert caplog.records[-1].getMessage() == "refused 10.0.0.5:10: wrong authkey"
    assert refusals.total == 851


def test_too_many_sources_are_summed_as_other_sources(caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.WARNING, logger="taskfleet.t")
    clock = Clock()
    refusals = RefusalLog(logging.getLogger("taskfleet.t"), 10, max_sources=2, clock=clock)
    for i in range(100):
        refusals.refuse(f"10.1.0.{i}", f"10.1.0.{i}:1", "r")
    assert len(caplog.records) == 3  # two sources, then "other sources" once
    clock.now += 10
    refusals.flush()
    assert (
        caplog.records[-1].getMessage() == "refused other sources: 97 more in the last 10s (r: 97)"
    )


def test_the_deadline_cuts_a_reader_that_keeps_receiving_bytes() -> None:
    """A per-read timeout would let a byte every 0.1 s hold the slot forever."""
    deadlines = Deadlines()
    deadlines.start()
    a, b = socket.socketpair()
    stop = threading.Event()

    def trickle() -> None:
        while not stop.wait(0.1):
            try:
                b.send(b"x")
            except OSError:
                return

    feeder = threading.Thread(target=trickle)
    feeder.start()
    try:
        t0 = time.monotonic()
        token = deadlines.add(a.fileno(), t0 + 0.6)
        a.settimeout(0.5)  # each read alone would always succeed in time
        received = 0
        while a.recv(1):
            received += 1
        took = time.monotonic() - t0
        assert deadlines.remove(token) is False, "it was cut"
        assert 0.55 < took < 2.0 and received >= 3
        # A handshake that ended in time is not cut later.
        c, d = socket.socketpair()
        token = deadlines.add(c.fileno(), time.monotonic() + 0.2)
        assert deadlines.remove(token) is True
        time.sleep(0.4)
        d.send(b"y")
        assert c.recv(1) == b"y"
        c.close()
        d.close()
    finally:
        stop.set()
        feeder.join()
        deadlines.stop()
        a.close()
        b.close()

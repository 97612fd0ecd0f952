"""Job functions used by the integration tests (``tests.integration.testjobs:NAME``)."""

from __future__ import annotations

import os
import sys
import threading
import time


def slow_square(n: int) -> int:
    """n*n after 2 ms: slow enough to kill things mid-job."""
    time.sleep(0.002)
    return n * n


def explode(n: int) -> int:
    if n == 7:
        raise ValueError("seven is not allowed")
    return n


def hang(n: int) -> int:
    """Item 7 never returns (without an item timeout it holds its chunk forever)."""
    if n == 7:
        time.sleep(3600)
    return n


def die(n: int) -> int:
    """Item 7 ends its process as a crashing C extension or the OOM killer would."""
    if n == 7:
        os._exit(3)
    return n


class TwoArgError(Exception):
    """An exception pickle cannot rebuild: ``__init__`` takes two required arguments."""

    def __init__(self, code: int, why: str) -> None:
        super().__init__(f"code {code}: {why}")
        self.code = code


def odd_exception(n: int) -> int:
    if n == 7:
        raise TwoArgError(42, "the answer")
    return n


def unpicklable(n: int) -> object:
    """Item 7's result cannot be pickled (a lock)."""
    if n == 7:
        return threading.Lock()
    return n


def fails_on_w1(n: int) -> int:
    """Items ending in 7 fail on the worker named w1 only (its pool processes share its argv)."""
    if n % 10 == 7 and sys.argv[sys.argv.index("--name") + 1] == "w1":
        raise RuntimeError("w1 cannot do sevens")
    return n * n


def slow_first(n: int) -> int:
    """Item 0 takes 3 s: chunk 0 finishes after the chunks behind it."""
    if n == 0:
        time.sleep(3.0)
    return n * n

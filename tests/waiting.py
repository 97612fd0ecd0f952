"""The one polling helper of every test tier: wait until something is true, or fail saying what."""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import TypeVar

import pytest

T = TypeVar("T")


def wait_for(
    what: str,
    check: Callable[[], T],
    timeout: float,
    interval: float = 0.5,
    detail: Callable[[], object] | None = None,
) -> T:
    """Call ``check`` every ``interval`` seconds until it returns something truthy; return that.

    After ``timeout`` seconds the test fails with ``timed out after N s waiting for <what>``
    and the state it saw: ``detail()`` when given, else the last value ``check`` returned.
    ``check`` may itself fail the test early (``pytest.fail``) when waiting is hopeless,
    e.g. the process it watches has exited.
    """
    deadline = time.monotonic() + timeout
    while True:
        last = check()
        if last:
            return last
        if time.monotonic() >= deadline:
            break
        time.sleep(interval)
    now = detail() if detail is not None else last
    pytest.fail(f"timed out after {timeout:g} s waiting for {what} (now: {now!r})")

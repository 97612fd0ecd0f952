"""Job functions used by the integration tests (``tests.integration.testjobs:NAME``)."""

from __future__ import annotations

import time


def slow_square(n: int) -> int:
    """n*n after 2 ms: slow enough to kill things mid-job."""
    time.sleep(0.002)
    return n * n


def explode(n: int) -> int:
    if n == 7:
        raise ValueError("seven is not allowed")
    return n

"""Job functions used by the integration tests (``tests.integration.testjobs:NAME``)."""

from __future__ import annotations

import time
from decimal import Decimal

from taskfleet.jobs import result_types


def slow_square(n: int) -> int:
    """n*n after 2 ms: slow enough to kill things mid-job."""
    time.sleep(0.002)
    return n * n


def explode(n: int) -> int:
    if n == 7:
        raise ValueError("seven is not allowed")
    return n


@result_types(Decimal)
def decimal_half(n: int) -> Decimal:
    """Results of a declared type: the client decodes them."""
    return Decimal(n) / 2


def undeclared_decimal(n: int) -> Decimal:
    """Results of a type the job does not declare: refused."""
    return Decimal(n)

"""A taskfleet job package: the job ``primes`` maps an integer n to whether n is prime.

A job is a plain function of one item. taskfleet calls it on the workers,
once per item of a chunk, and sends its return value back to the client;
it must be importable by name (the entry point in pyproject.toml), and its
items and results must pickle.
"""

from __future__ import annotations

import math


def is_prime(n: int) -> bool:
    """True when ``n`` is a prime number (trial division by 2, 3 and 6k ± 1 up to √n)."""
    if n < 4:
        return n >= 2
    if n % 2 == 0 or n % 3 == 0:
        return False
    for k in range(5, math.isqrt(n) + 1, 6):
        if n % k == 0 or n % (k + 2) == 0:
            return False
    return True

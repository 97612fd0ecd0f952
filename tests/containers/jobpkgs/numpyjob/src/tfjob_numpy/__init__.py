"""Test job package: a job that runs numpy's compiled code on the workers."""

from __future__ import annotations

import numpy as np


def vector_norm(n: int) -> float:
    """The Euclidean norm of [0, 1, …, n - 1], computed by numpy."""
    return float(np.linalg.norm(np.arange(n, dtype=np.float64)))

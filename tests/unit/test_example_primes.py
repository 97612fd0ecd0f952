"""examples/primes, the worked example of a job package: its function and its entry point."""

from __future__ import annotations

import importlib.util
import tomllib
from pathlib import Path
from types import ModuleType

import pytest

EXAMPLE = Path(__file__).resolve().parents[2] / "examples" / "primes"


def load() -> ModuleType:
    path = EXAMPLE / "src" / "taskfleet_primes" / "__init__.py"
    spec = importlib.util.spec_from_file_location("taskfleet_primes", path)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def sieve(limit: int) -> list[bool]:
    """The plain sieve of Eratosthenes: the reference the job is checked against."""
    prime = [True] * limit
    prime[:2] = [False, False]
    for n in range(2, int(limit**0.5) + 1):
        if prime[n]:
            prime[n * n :: n] = [False] * len(prime[n * n :: n])
    return prime


def test_is_prime_agrees_with_a_sieve_below_one_hundred_thousand() -> None:
    is_prime = load().is_prime
    expected = sieve(100_000)
    assert [is_prime(n) for n in range(100_000)] == expected
    assert sum(expected) == 9592


@pytest.mark.parametrize(
    ("n", "prime"),
    [(-7, False), (0, False), (1, False), (2, True), (3, True), (25, False), (999_983, True)],
)
def test_is_prime_edges(n: int, prime: bool) -> None:
    assert load().is_prime(n) is prime


def test_the_entry_point_names_the_job_primes_in_the_taskfleet_jobs_group() -> None:
    project = tomllib.loads((EXAMPLE / "pyproject.toml").read_text())
    assert project["project"]["entry-points"]["taskfleet.jobs"] == {
        "primes": "taskfleet_primes:is_prime"
    }
    assert project["project"]["dependencies"] == []

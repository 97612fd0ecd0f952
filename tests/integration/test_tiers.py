"""The tier gate of tests/conftest.py: what a pytest run may select, by flag and marker.

Each case runs a real `pytest --collect-only` process on one file per tier (collection only:
nothing is set up, no container starts).
"""

from __future__ import annotations

import functools
import os
import subprocess
import sys
from pathlib import Path

import pytest

from tests.conftest import tier_of

REPO = Path(__file__).resolve().parents[2]
ONE_FILE_PER_TIER = [
    "tests/unit/test_address.py",
    "tests/integration/test_wire.py",
    "tests/lint/test_roles_lint.py",
    "tests/containers/test_images.py",
    "tests/e2e/test_99_lab_down.py",
]


@functools.cache
def collected_tiers(*args: str) -> tuple[frozenset[str], str]:
    """The tiers of the tests `pytest --collect-only *args` selects, and its output."""
    pytest_argv = ["-m", "pytest", "--collect-only", "-q", "-p", "no:cacheprovider"]
    result = subprocess.run(
        [sys.executable, *pytest_argv, *ONE_FILE_PER_TIER, *args],
        cwd=REPO,
        env={k: v for k, v in os.environ.items() if k != "PYTEST_ADDOPTS"},  # the bare run
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert result.returncode == 0, result.stdout + result.stderr
    ids = [line for line in result.stdout.splitlines() if "::" in line]
    return frozenset(line.split("/")[1] for line in ids), result.stdout


@pytest.mark.parametrize(
    ("args", "tiers"),
    [
        ((), {"unit", "integration"}),
        (("--run-e2e",), {"unit", "integration", "e2e"}),
        (("--run-all",), {"unit", "integration", "lint", "containers", "e2e"}),
        (("-m", "lint"), {"lint"}),
    ],
    ids=["bare", "run-e2e", "run-all", "marker-lint"],
)
def test_opt_in_tiers_are_selected_only_when_asked_for(
    args: tuple[str, ...], tiers: set[str]
) -> None:
    selected, _ = collected_tiers(*args)
    assert selected == tiers


def test_a_bare_run_says_which_flags_bring_back_the_rest() -> None:
    _, out = collected_tiers()
    assert "not run, opt-in tiers: " in out
    for flag in ("--run-lint", "--run-containers", "--run-e2e", "--run-all"):
        assert flag in out


def test_a_test_outside_every_tier_folder_is_a_usage_error() -> None:
    with pytest.raises(pytest.UsageError, match=r"test_stray\.py is in no test tier — move it"):
        tier_of(REPO / "tests" / "test_stray.py")
    assert tier_of(REPO / "tests" / "e2e" / "test_10_lab.py") == "e2e"

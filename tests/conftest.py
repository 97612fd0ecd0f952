"""Test tiers: every test is marked by its folder, and the slow or intrusive tiers are opt-in.

========================  ==============================  ==========================
tier (marker, folder)     what it needs                   runs
========================  ==============================  ==========================
``unit``                  nothing                         always
``integration``           processes on 127.0.0.1          always
``lint``                  the linters in ``.venv``        ``--run-lint``
``containers``            a Docker engine                 ``--run-containers``
``e2e``                   the simulated lab (Docker)      ``--run-e2e``
========================  ==============================  ==========================

``--run-all`` opts in to every tier, and so does a ``-m`` expression that names the tier
(``-m e2e``). Tests of a tier nobody asked for are *deselected*, not skipped: they are never
set up, so a bare ``pytest`` starts no container and cannot touch a running lab. The one-line
note at the end of the run says which flag brings them back.

With ``-k``/``-m``, a run whose selection matches nothing exits 0 ("N deselected"), not 5:
``make test PYTEST_ARGS="-k lease"`` runs one pytest per tier and must go on past a tier with
no match.

``--keep-lab`` (e2e): leave the lab running at the end of the session for inspection; by
default the session removes it, whether the tests passed or not (``tests/e2e/conftest.py``).

Markers are declared in ``pyproject.toml`` and enforced with ``--strict-markers``.
"""

from __future__ import annotations

import re
from pathlib import Path

import pytest

TESTS = Path(__file__).resolve().parent
#: Tiers that run by default, then the opt-in ones with the flag that turns each on.
DEFAULT_TIERS = ("unit", "integration")
OPT_IN_TIERS = {
    "lint": "--run-lint",
    "containers": "--run-containers",
    "e2e": "--run-e2e",
}
_STASH_DESELECTED = pytest.StashKey[dict[str, int]]()


def pytest_addoption(parser: pytest.Parser) -> None:
    group = parser.getgroup("taskfleet", "taskfleet test tiers (tests/conftest.py)")
    group.addoption(
        "--run-lint",
        action="store_true",
        help="run the lint tier: ruff check and format, mypy, ansible-lint, yamllint (~40 s)",
    )
    group.addoption(
        "--run-containers",
        action="store_true",
        help="run the containers tier: builds the images, runs them on a Docker engine",
    )
    group.addoption(
        "--run-e2e",
        action="store_true",
        help="run the e2e tier: a simulated lab of its own, Ansible, Fabric (~15 min)",
    )
    group.addoption(
        "--run-all", action="store_true", help="run every tier (= the three --run-* flags)"
    )
    group.addoption(
        "--keep-lab",
        action="store_true",
        help="e2e: leave the lab running after the session (default: remove it, pass or fail)",
    )


def tier_of(path: Path) -> str:
    """The tier of a test file: the first folder under tests/.

    Raises pytest.UsageError for a test outside every tier folder, so no test escapes the
    opt-in rules by living somewhere else.
    """
    try:
        folder = path.resolve().relative_to(TESTS).parts[0]
    except (ValueError, IndexError):
        folder = ""
    if folder not in (*DEFAULT_TIERS, *OPT_IN_TIERS):
        tiers = ", ".join(f"tests/{t}/" for t in (*DEFAULT_TIERS, *OPT_IN_TIERS))
        raise pytest.UsageError(f"{path} is in no test tier — move it into one of {tiers}")
    return folder


def enabled_tiers(config: pytest.Config) -> set[str]:
    """The tiers this run may execute: the defaults, the flagged ones, the ones ``-m`` names."""
    enabled = set(DEFAULT_TIERS)
    markexpr = config.getoption("markexpr") or ""
    for tier, flag in OPT_IN_TIERS.items():
        named = re.search(rf"\b{tier}\b", markexpr) is not None
        # `-m "not e2e"` also names the tier; enabling it is harmless, -m deselects it anyway.
        if config.getoption(flag) or config.getoption("--run-all") or named:
            enabled.add(tier)
    return enabled


def pytest_report_header(config: pytest.Config) -> str:
    enabled = enabled_tiers(config)
    off = [f"{flag} ({tier})" for tier, flag in OPT_IN_TIERS.items() if tier not in enabled]
    line = "tiers: " + ", ".join(t for t in (*DEFAULT_TIERS, *OPT_IN_TIERS) if t in enabled)
    return line + (f"; opt in with {', '.join(off)} or --run-all" if off else "")


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    enabled = enabled_tiers(config)
    keep: list[pytest.Item] = []
    dropped: list[pytest.Item] = []
    counts: dict[str, int] = {}
    for item in items:
        tier = tier_of(item.path)
        item.add_marker(tier)
        if tier in enabled:
            keep.append(item)
        else:
            dropped.append(item)
            counts[tier] = counts.get(tier, 0) + 1
    if dropped:
        config.hook.pytest_deselected(items=dropped)
        items[:] = keep
    config.stash[_STASH_DESELECTED] = counts


def pytest_terminal_summary(terminalreporter: pytest.TerminalReporter) -> None:
    counts = terminalreporter.config.stash.get(_STASH_DESELECTED, {})
    if counts:
        parts = [f"{n} {tier} ({OPT_IN_TIERS[tier]})" for tier, n in sorted(counts.items())]
        terminalreporter.write_line(
            f"not run, opt-in tiers: {', '.join(parts)}; --run-all runs every tier"
        )


def pytest_sessionfinish(session: pytest.Session, exitstatus: int) -> None:
    # `make test PYTEST_ARGS="-k lease"` runs one pytest per tier: a tier where the -k/-m
    # selection matches nothing has passed, not failed (pytest's exit code 5 would stop make).
    selected_by_user = session.config.getoption("keyword") or session.config.getoption("markexpr")
    if exitstatus == pytest.ExitCode.NO_TESTS_COLLECTED and selected_by_user:
        session.exitstatus = pytest.ExitCode.OK

"""The polling helper every tier waits with (tests/waiting.py)."""

from __future__ import annotations

import pytest

from tests.waiting import wait_for


def test_wait_for_returns_the_first_truthy_value() -> None:
    values = iter([None, 0, "", {"done": 3}])
    assert wait_for("the job", lambda: next(values), timeout=5, interval=0) == {"done": 3}


def test_wait_for_fails_naming_what_and_the_last_value_seen() -> None:
    with pytest.raises(pytest.fail.Exception) as failure:
        wait_for("three workers", lambda: [], timeout=0.05, interval=0.01)
    assert str(failure.value) == "timed out after 0.05 s waiting for three workers (now: [])"


def test_wait_for_reports_the_detail_instead_when_given() -> None:
    with pytest.raises(pytest.fail.Exception) as failure:
        wait_for("health", lambda: False, timeout=0, detail=lambda: {"w1": "starting"})
    assert str(failure.value) == "timed out after 0 s waiting for health (now: {'w1': 'starting'})"


def test_wait_for_checks_at_least_once_even_with_no_time_left() -> None:
    assert wait_for("anything", lambda: "here", timeout=0) == "here"

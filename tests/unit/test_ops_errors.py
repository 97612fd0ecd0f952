"""The ops error family and its one printer: one line on stderr, the class's exit code."""

from __future__ import annotations

import pickle

import pytest

from taskfleet.errors import TaskfleetError
from taskfleet.ops.errors import (
    HostError,
    ImagesError,
    InventoryError,
    LabError,
    OpsError,
    print_error,
    run_cli,
)


def test_every_ops_error_is_a_taskfleet_error_with_what_and_fix() -> None:
    for cls in (OpsError, InventoryError, HostError, LabError, ImagesError):
        assert issubclass(cls, TaskfleetError)
    error = LabError("the Docker engine does not answer", "start it")
    assert (error.what, error.fix) == ("the Docker engine does not answer", "start it")
    assert str(error) == "the Docker engine does not answer — start it"
    assert str(OpsError("N must be an integer, got 'two'")) == "N must be an integer, got 'two'"


def test_exit_codes_are_those_each_tool_always_used() -> None:
    # A refused Fabric task exits 2; the lab and the image builds exit 1.
    assert (OpsError.exit_code, InventoryError.exit_code, HostError.exit_code) == (2, 2, 2)
    assert (LabError.exit_code, ImagesError.exit_code) == (1, 1)


def test_an_inventory_error_lists_every_problem_and_survives_pickle() -> None:
    error = InventoryError("inventory/x", ["a: bad", "b: worse"])
    assert str(error) == "inventory inventory/x is not usable — fix these:\n  a: bad\n  b: worse"
    again = pickle.loads(pickle.dumps(error))
    assert (type(again), str(again), again.problems) == (
        InventoryError,
        str(error),
        ["a: bad", "b: worse"],
    )


def test_the_printer_writes_exactly_one_prefixed_line(capsys: pytest.CaptureFixture[str]) -> None:
    print_error(ImagesError("docker save failed (no space)", "run make images, then retry"))
    print_error("2 of 3 host(s) failed: w1, w2 — see DETAIL above")
    captured = capsys.readouterr()
    assert captured.out == ""
    assert captured.err == (
        "taskfleet: error: docker save failed (no space) — run make images, then retry\n"
        "taskfleet: error: 2 of 3 host(s) failed: w1, w2 — see DETAIL above\n"
    )


def test_run_cli_prints_an_ops_error_and_returns_its_exit_code(
    capsys: pytest.CaptureFixture[str],
) -> None:
    def refused() -> int:
        print("started")
        raise LabError("LAB_WORKERS='0' must be a whole number from 1 to 80", "e.g. LAB_WORKERS=3")

    assert run_cli(refused) == 1
    captured = capsys.readouterr()
    assert captured.out == "started\n"
    assert captured.err == (
        "taskfleet: error: LAB_WORKERS='0' must be a whole number from 1 to 80"
        " — e.g. LAB_WORKERS=3\n"
    )


def test_run_cli_passes_the_action_status_through(capsys: pytest.CaptureFixture[str]) -> None:
    assert run_cli(lambda: 0) == 0
    assert run_cli(lambda: None) == 0
    assert run_cli(lambda: 1) == 1  # e.g. a host failed; the operation printed its summary
    assert capsys.readouterr().err == ""


def test_an_interrupt_is_one_line_and_exit_130(capsys: pytest.CaptureFixture[str]) -> None:
    def interrupted() -> None:
        raise KeyboardInterrupt

    assert run_cli(interrupted) == 130
    assert capsys.readouterr().err == (
        "taskfleet: error: interrupted — run the command again to finish\n"
    )


def test_a_bug_keeps_its_traceback() -> None:
    def broken() -> None:
        raise ZeroDivisionError

    with pytest.raises(ZeroDivisionError):
        run_cli(broken)

"""Jobs by name: built in, module:function, entry points; refused when unknown."""

from __future__ import annotations

import pickle
from pathlib import Path

import pytest

from taskfleet import jobs
from taskfleet.errors import BadJobArguments, UnknownJob


def test_squares_is_built_in() -> None:
    assert jobs.resolve("squares")(12) == 144
    assert "squares" in jobs.available()


def test_module_function_names_resolve() -> None:
    assert jobs.resolve("math:factorial")(5) == 120


@pytest.mark.parametrize(
    ("name", "detail"),
    [
        ("nosuchjob", ""),
        (
            "no_such_module_xyz:f",
            " (cannot import no_such_module_xyz: No module named 'no_such_module_xyz')",
        ),
        ("math:nope", " (math has no function nope)"),
        ("os;rm:x", ""),
    ],
)
def test_unknown_jobs_are_refused_with_the_valid_names(name: str, detail: str) -> None:
    with pytest.raises(UnknownJob) as err:
        jobs.resolve(name)
    assert str(err.value) == (
        f"unknown job {name!r}{detail}"
        f" — use one of: {', '.join(jobs.available())}, or package.module:function"
    )


def test_squares_refuses_items_that_are_not_numbers() -> None:
    jobs.validate("squares", [1, 2.5, 3])
    with pytest.raises(BadJobArguments) as err:
        jobs.validate("squares", [1, "x"])
    assert str(err.value) == (
        "squares: item 2 ('x') is not a number"
        " — give squares integers, one per line in the items file"
    )


def test_run_chunk_returns_pickled_results_for_ranges_and_items() -> None:
    assert pickle.loads(jobs.run_chunk("squares", ("range", 3, 6))) == [9, 16, 25]
    assert pickle.loads(jobs.run_chunk("squares", ("items", [7, -2]))) == [49, 4]


def test_entry_point_jobs_resolve_by_name(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    # A minimal installed distribution advertising a job in taskfleet.jobs.
    dist = tmp_path / "tf_plugin_example-1.0.dist-info"
    dist.mkdir()
    (dist / "METADATA").write_text("Metadata-Version: 2.1\nName: tf-plugin-example\nVersion: 1.0\n")
    (dist / "entry_points.txt").write_text("[taskfleet.jobs]\nfactorial_ep = math:factorial\n")
    monkeypatch.syspath_prepend(str(tmp_path))
    assert "factorial_ep" in jobs.available()
    assert jobs.resolve("factorial_ep")(4) == 24


def test_a_job_declares_its_result_types_by_class_or_name() -> None:
    from decimal import Decimal

    from taskfleet.jobs import declared_result_types, result_types

    @result_types(Decimal, "fractions:Fraction")
    def f(n: int) -> Decimal:
        return Decimal(n)

    assert f.taskfleet_result_types == ("decimal:Decimal", "fractions:Fraction")  # type: ignore[attr-defined]
    assert declared_result_types("squares") == []
    assert declared_result_types("tests.integration.testjobs:decimal_half") == ["decimal:Decimal"]
    with pytest.raises(ValueError):
        result_types("decimal.Decimal")

"""Jobs by name: built in, module:function, entry points; refused when unknown.
Running a chunk: each item's failure is recorded where it happened, as text."""

from __future__ import annotations

import pickle
from pathlib import Path
from typing import Any

import pytest

from taskfleet import __version__, defaults, jobs
from taskfleet.errors import BadJobArguments, ItemError, UnknownJob
from tests.fakedist import fake_distribution


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
        f" — use one of: {', '.join(jobs.available())}, or package.module:function;"
        " your own job package must be in the images (make deploy JOBS=<folder>, docs/jobs.md)"
    )


def test_squares_takes_integers_of_any_size() -> None:
    jobs.validate("squares", [1, -2, 0, 10**5000, 2**64])


@pytest.mark.parametrize(
    ("item", "shown", "kind"),
    [
        (2.5, "2.5", "float"),
        (float("nan"), "nan", "float"),
        (float("inf"), "inf", "float"),  # what JSON's 1e400 reads as
        (True, "True", "bool"),
        ("x", "'x'", "str"),
        ("7" * 500, "'" + "7" * 58 + "…", "str"),
        (None, "None", "NoneType"),
        ([1], "[1]", "list"),
    ],
)
def test_squares_refuses_every_item_that_is_not_an_integer(
    item: Any, shown: str, kind: str
) -> None:
    with pytest.raises(BadJobArguments) as err:
        jobs.validate("squares", [1, 2, item, 4], offset=10)
    assert str(err.value) == (
        f"squares: item 13 ({shown}) is a {kind}, not an integer"
        " — give squares whole numbers, one per line in the items file"
    )


def test_run_segment_returns_pickled_results_for_ranges_and_items() -> None:
    blob, failed, failures = jobs.run_segment("squares", ("range", 3, 6), 0, 3, stop_on_error=True)
    assert (pickle.loads(blob), failed, failures) == ([9, 16, 25], 0, [])
    blob, failed, failures = jobs.run_segment(
        "squares", ("items", [7, -2]), 0, 2, stop_on_error=True
    )
    assert (pickle.loads(blob), failed, failures) == ([49, 4], 0, [])


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


def test_installed_job_packages_and_code_versions_name_the_distributions(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    source = "def is_prime(n):\n    return n == 2\n"
    jobs_ = {"primes_ep": "tf_primes_mod:is_prime"}
    fake_distribution(tmp_path, "tf-primes", "2.1.0", "tf_primes_mod", source, jobs_)
    monkeypatch.syspath_prepend(str(tmp_path))
    jobs.code_version.cache_clear()
    try:
        assert jobs.installed_packages()["tf-primes"] == "2.1.0"
        assert jobs.code_version("primes_ep") == "tf-primes 2.1.0"
        assert jobs.code_version("tf_primes_mod:is_prime") == "tf-primes 2.1.0"
        assert jobs.code_version("squares") == f"taskfleet {__version__}"
        assert jobs.code_version("math:factorial") == ""  # the standard library: no distribution
    finally:
        jobs.code_version.cache_clear()


# -- running a chunk: failures per item ---------------------------------------------------

TESTJOBS = "tests.integration.testjobs"


def run(
    job: str, payload: tuple[Any, ...], *, stop: bool = False
) -> tuple[list[Any], int, list[Any]]:
    data = jobs.chunk_data(payload)
    blob, failed, failures = jobs.run_segment(
        job, payload, 0, len(data), stop_on_error=stop, worker="w1", host="hostA"
    )
    return jobs.decode_results(blob), failed, failures


def test_an_exception_fails_its_item_and_keeps_the_other_results() -> None:
    results, failed, (failure,) = run(f"{TESTJOBS}:explode", ("range", 5, 10))
    assert failed == 1
    assert results[:2] == [5, 6] and results[3:] == [8, 9]
    placeholder = results[2]
    assert isinstance(placeholder, ItemError)
    assert (placeholder.index, placeholder.item, placeholder.kind) == (2, "7", "exception")
    assert (placeholder.worker, placeholder.host, placeholder.traceback) == ("w1", "hostA", "")
    assert failure.position == 2 and failure.type == "ValueError"
    assert failure.message == "seven is not allowed"
    assert failure.traceback.startswith("Traceback (most recent call last):\n")
    assert 'raise ValueError("seven is not allowed")' in failure.traceback
    assert "taskfleet/jobs.py" not in failure.traceback, "it starts in the job function"


def test_a_job_that_fails_at_its_first_error_stops_there() -> None:
    results, failed, failures = run(f"{TESTJOBS}:explode", ("range", 5, 10), stop=True)
    assert failed == 1 and len(failures) == 1 and len(results) == 3


def test_an_exception_pickle_cannot_rebuild_is_described_as_text() -> None:
    _, failed, (failure,) = run(f"{TESTJOBS}:odd_exception", ("items", [6, 7, 8]))
    assert failed == 1
    assert failure.type == "tests.integration.testjobs.TwoArgError"
    assert failure.message == "code 42: the answer"


def test_a_result_that_cannot_be_pickled_fails_its_item() -> None:
    results, failed, (failure,) = run(f"{TESTJOBS}:unpicklable", ("range", 6, 9))
    assert failed == 1 and results[0] == 6 and results[2] == 8
    assert failure.kind == "unpicklable" and failure.item == "7"
    assert failure.message.startswith("its result cannot be pickled: cannot pickle")


def test_sys_exit_in_a_job_function_fails_the_item_not_the_process() -> None:
    results, failed, (failure, _) = run("sys:exit", ("items", [0, "bye"]))
    assert failed == 2 and failure.type == "SystemExit"
    assert all(isinstance(r, ItemError) for r in results)


def test_only_the_first_failures_of_a_chunk_carry_a_traceback() -> None:
    results, failed, failures = run("math:sqrt", ("range", -20, 0))
    assert failed == 20 and len(failures) == defaults.MAX_CHUNK_ERRORS
    assert all(isinstance(r, ItemError) and r.message == "math domain error" for r in results)


def test_a_job_name_the_worker_cannot_resolve_fails_every_item() -> None:
    results, failed, (failure, *_) = run("no_such_module:f", ("range", 0, 3))
    assert failed == 3 and failure.type == "taskfleet.errors.UnknownJob"
    assert [r.index for r in results] == [0, 1, 2]


def test_error_texts_are_bounded() -> None:
    assert len(jobs.safe_repr("x" * 10_000)) == defaults.ERROR_ITEM_CHARS
    assert jobs.safe_repr(10**5000) == "<int of 5,001 digits>", "named by its size, not converted"
    assert jobs.safe_repr(-(10**5000) + 1) == "<negative int of 5,000 digits>"
    assert jobs.safe_repr(2**100) == "1267650600228229401496703205376", "short ones are shown"

    class Broken:
        def __repr__(self) -> str:
            raise RuntimeError("no")

    assert jobs.safe_repr(Broken()).endswith(".Broken object (repr failed: RuntimeError)>")
    failure = jobs.describe(ValueError("m" * 5000), 0, 1)
    assert len(failure.message) == defaults.ERROR_MESSAGE_CHARS


def test_a_chunk_run_in_pieces_reads_back_as_one_list() -> None:
    parts = [
        pickle.dumps([1, 2]),
        pickle.dumps([ItemError(2, "3", "crash", "", "died")]),
        pickle.dumps([4]),
    ]
    results = jobs.decode_results(jobs.join_blobs(parts))
    assert results[:2] == [1, 2] and results[3] == 4 and isinstance(results[2], ItemError)
    assert jobs.join_blobs(parts[:1]) == parts[0]


def test_a_result_of_an_undeclared_class_fails_its_item_with_how_to_declare_it() -> None:
    name = f"{TESTJOBS}:undeclared_decimal"
    jobs._checked.discard(name)
    results, failed, failures = run(name, ("range", 0, 3))
    assert failed == 3 and all(isinstance(r, ItemError) for r in results)
    assert (failures[0].kind, failures[0].type) == (
        "unpicklable",
        "taskfleet.safepickle.UnsafePickle",
    )
    assert failures[0].message.endswith(
        "declare it with @taskfleet.jobs.result_types(Decimal) on the job function"
    )
    assert name not in jobs._checked, "a refused job is checked again on its next chunk"


def test_declared_results_pass_the_check_once_and_decode_only_with_the_declaration() -> None:
    from decimal import Decimal

    from taskfleet import safepickle

    name = f"{TESTJOBS}:decimal_half"
    jobs._checked.discard(name)
    blob, failed, _ = jobs.run_segment(name, ("range", 0, 3), 0, 3, stop_on_error=False)
    assert failed == 0 and name in jobs._checked
    declared = safepickle.results_allowlist(["decimal:Decimal"])
    assert jobs.decode_results(blob, declared) == [Decimal(0), Decimal("0.5"), Decimal(1)]
    with pytest.raises(safepickle.UnsafePickle, match="decimal:Decimal"):
        jobs.decode_results(blob)

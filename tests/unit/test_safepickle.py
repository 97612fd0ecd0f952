"""The restricted unpickler: plain data passes, code never runs, declared types are admitted."""

from __future__ import annotations

import datetime as dt
import os
import pickle
from decimal import Decimal
from fractions import Fraction
from pathlib import Path
from typing import Any

import pytest

from taskfleet import safepickle
from taskfleet.errors import ItemError, JobFailed, RemoteError, UnknownJob
from tests.integration.relay import Exec


class _System:
    def __reduce__(self) -> tuple[Any, ...]:
        return (os.system, ("true",))


PLAIN_VALUES = [
    None,
    True,
    -(2**70),
    3.5,
    1 + 2j,
    "text",
    b"bytes",
    bytearray(b"ba"),
    (1, "a", (2,)),
    [1, [2, [3]]],
    {"k": {"n": [1, 2]}},
    {1, 2},
    frozenset({"a"}),
]


@pytest.mark.parametrize("protocol", [3, 4, 5])
@pytest.mark.parametrize("value", PLAIN_VALUES, ids=lambda v: type(v).__name__)
def test_plain_data_decodes_under_every_pickle_protocol(value: Any, protocol: int) -> None:
    assert safepickle.loads(pickle.dumps(value, protocol=protocol)) == value


def test_a_reduce_payload_is_refused_before_anything_runs(tmp_path: Path) -> None:
    marker = tmp_path / "ran"
    blob = pickle.dumps([1, 2, Exec(f"open({str(marker)!r}, 'w').write('x')")])
    pickle.loads(blob)  # the stock unpickler runs it: the payload is real
    assert marker.exists()
    marker.unlink()
    with pytest.raises(safepickle.UnsafePickle) as err:
        safepickle.loads(blob)
    assert err.value.name == "builtins:exec"
    assert not marker.exists()
    with pytest.raises(safepickle.UnsafePickle, match="posix:system"):
        safepickle.loads(pickle.dumps(_System()), safepickle.results_allowlist([]))


def test_taskfleet_errors_decode_on_the_wire_but_other_classes_do_not() -> None:
    err = safepickle.loads(pickle.dumps(("#ERROR", UnknownJob("unknown job 'x'", "use squares"))))
    assert isinstance(err[1], UnknownJob) and str(err[1]) == "unknown job 'x' — use squares"
    assert isinstance(safepickle.loads(pickle.dumps(RemoteError("boom"))), RemoteError)
    for value in (ValueError("x"), Decimal(1), dt.date(2020, 1, 1), range(3)):
        with pytest.raises(safepickle.UnsafePickle):
            safepickle.loads(pickle.dumps(value))
    # errors are for #ERROR replies, not results
    with pytest.raises(safepickle.UnsafePickle, match=r"taskfleet\.errors:JobFailed"):
        safepickle.loads(pickle.dumps([JobFailed("x")]), safepickle.results_allowlist([]))


def test_results_admit_exactly_what_the_job_declares() -> None:
    blob = pickle.dumps([Decimal("1.5"), Fraction(1, 3)], protocol=5)
    declared = safepickle.results_allowlist(["decimal:Decimal", "fractions:Fraction"])
    assert safepickle.loads(blob, declared) == [Decimal("1.5"), Fraction(1, 3)]
    with pytest.raises(safepickle.UnsafePickle, match="fractions:Fraction"):
        safepickle.loads(blob, safepickle.results_allowlist(["decimal:Decimal"]))


def test_global_names_are_module_colon_qualname() -> None:
    assert safepickle.global_name(Decimal) == "decimal:Decimal"
    assert safepickle.global_name(dt.datetime) == "datetime:datetime"
    assert safepickle.parse_global("a.b:C.D") == ("a.b", "C.D")
    for bad in ("decimal.Decimal", ":x", "m:", "a:b:c"):
        with pytest.raises(ValueError):
            safepickle.parse_global(bad)


def test_a_failed_items_record_decodes_among_results_and_on_the_wire() -> None:
    record = ItemError(3, "7", "exception", "ValueError", "no", worker="w1", host="h")
    blob = pickle.dumps([9, record], protocol=pickle.HIGHEST_PROTOCOL)
    assert safepickle.loads(blob, safepickle.RESULTS) == [9, record]
    assert safepickle.loads(blob, safepickle.results_allowlist(["decimal:Decimal"]))[1] == record
    assert safepickle.loads(pickle.dumps(JobFailed("x", error=record))).error == record

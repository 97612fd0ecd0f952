"""The worker's process pool with real forked processes: crashes, hangs and cancels are
attributed to their chunk and item, and the pool recovers from each."""

from __future__ import annotations

import logging
import os
import signal
import time
from collections.abc import Iterator

import pytest

from taskfleet.errors import ItemError
from taskfleet.jobs import decode_results
from taskfleet.pool import Pool
from taskfleet.protocol import ChunkId, Lease, Result

TESTJOBS = "tests.integration.testjobs"


@pytest.fixture
def pool() -> Iterator[Pool]:
    p = Pool(2, "w1", "hostA", logging.getLogger("taskfleet.test-pool"))
    p.start()
    try:
        yield p
    finally:
        p.close()


def lease(chunk: int, job: str, payload: tuple[object, ...], **kw: object) -> Lease:
    return Lease("j", chunk, job, payload, **kw)  # type: ignore[arg-type]


def collect(pool: Pool, n: int, timeout: float = 30.0) -> dict[int, Result]:
    out: dict[int, Result] = {}
    deadline = time.monotonic() + timeout
    while len(out) < n:
        assert time.monotonic() < deadline, f"{len(out)}/{n} chunks after {timeout}s"
        pool.wait(0.2)
        out.update((r.chunk, r) for r in pool.take())
    return out


def alive(pid: int) -> bool:
    try:
        with open(f"/proc/{pid}/stat") as fh:
            return fh.read().split(") ")[1][0] != "Z"
    except FileNotFoundError:
        return False


def test_chunks_run_and_come_back_with_their_results(pool: Pool) -> None:
    pool.submit([lease(i, "squares", ("range", i * 10, i * 10 + 10)) for i in range(6)])
    results = collect(pool, 6)
    assert all(r.failed == 0 for r in results.values())
    assert decode_results(results[3].blob) == [x * x for x in range(30, 40)]
    assert len(pool) == 0 and pool.replaced == 0


def test_a_process_that_dies_is_replaced_and_its_item_named(pool: Pool) -> None:
    before = set(pool.pids())
    pool.submit([lease(0, f"{TESTJOBS}:die", ("range", 0, 10), on_error="skip")])
    (result,) = collect(pool, 1).values()
    assert result.failed == 1
    (failure,) = result.errors
    assert (failure.position, failure.kind, failure.item) == (7, "crash", "7")
    assert "exited with code 3" in failure.message
    results = decode_results(result.blob)
    assert results[:7] == list(range(7)) and results[8:] == [8, 9]
    assert isinstance(results[7], ItemError) and results[7].kind == "crash"
    assert (results[7].worker, results[7].host) == ("w1", "hostA")
    # one death in the fast path, one in isolation mode: two replacements
    assert pool.replaced == 2 and len(pool.pids()) == 2 and len(before & set(pool.pids())) < 2
    pool.submit([lease(1, "squares", ("range", 0, 3))])
    assert decode_results(collect(pool, 1)[1].blob) == [0, 1, 4], "the pool still works"


def test_a_job_that_fails_at_its_first_error_reports_the_crash_at_once(pool: Pool) -> None:
    pool.submit([lease(0, f"{TESTJOBS}:die", ("items", [5, 6, 7, 8]), on_error="fail")])
    (result,) = collect(pool, 1).values()
    assert result.failed == 1 and [f.item for f in result.errors] == ["7"]


def test_an_item_past_its_timeout_is_cut_and_the_rest_of_the_chunk_runs(pool: Pool) -> None:
    t0 = time.monotonic()
    pool.submit([lease(0, f"{TESTJOBS}:hang", ("range", 5, 10), item_timeout=0.5, on_error="skip")])
    (result,) = collect(pool, 1).values()
    assert time.monotonic() - t0 < 10
    (failure,) = result.errors
    assert (failure.kind, failure.item) == ("timeout", "7")
    assert "item timeout (0.5s)" in failure.message
    results = decode_results(result.blob)
    assert [r for r in results if not isinstance(r, ItemError)] == [5, 6, 8, 9]


def test_cancel_kills_the_process_running_the_chunk(pool: Pool) -> None:
    pool.submit([lease(0, f"{TESTJOBS}:hang", ("range", 7, 8))])
    deadline = time.monotonic() + 5
    pids = set(pool.pids())
    time.sleep(0.5)  # the chunk is running
    assert pool.cancel([ChunkId("j", 0)]) == 1 and len(pool) == 0
    while set(pool.pids()) & pids == pids and time.monotonic() < deadline:
        time.sleep(0.05)
    assert len(set(pool.pids()) & pids) == 1, "the hung process was killed and replaced"
    time.sleep(0.3)
    assert pool.take() == [], "a cancelled chunk never comes back"
    assert pool.replaced == 0, "a cancel is not a crash"


def test_a_process_stopped_by_sigterm_was_interrupted_and_its_chunk_runs_again(
    pool: Pool,
) -> None:
    pool.submit([lease(0, f"{TESTJOBS}:slow_square", ("range", 0, 500), on_error="fail")])
    time.sleep(0.3)
    for pid in pool.pids():
        os.kill(pid, signal.SIGTERM)  # a stop of the whole process group
    (result,) = collect(pool, 1).values()
    assert result.failed == 0 and decode_results(result.blob) == [x * x for x in range(500)]


def test_close_kills_every_process_even_a_hung_one() -> None:
    p = Pool(2, "w1", "hostA", logging.getLogger("taskfleet.test-pool"))
    p.start()
    p.submit([lease(0, f"{TESTJOBS}:hang", ("range", 7, 8))])
    time.sleep(0.3)
    pids = p.pids()
    assert len(pids) == 2 and all(alive(pid) for pid in pids)
    p.close()
    assert not any(alive(pid) for pid in pids)

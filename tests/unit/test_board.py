"""The board as a state machine, driven by a hand-held clock.

Every board a test makes comes from the ``make_board`` fixture, whose
teardown runs :meth:`Board.check`: each scenario also proves the board's
counters still agree with a brute-force recount.
"""

from __future__ import annotations

import random
import threading
import time
import tracemalloc
from collections.abc import Callable, Iterator

import pytest

from taskfleet.board import STORED, Board, JobSpec, check_size
from taskfleet.errors import BadJobArguments
from taskfleet.protocol import ChunkId, JobState


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


@pytest.fixture
def clock() -> Clock:
    return Clock()


MakeBoard = Callable[..., Board]


@pytest.fixture
def make_board(clock: Clock) -> Iterator[MakeBoard]:
    """Boards on the hand-held clock (``real_clock=True``: time.monotonic), checked at teardown."""
    made: list[Board] = []

    def make(lease_timeout: float = 10.0, *, real_clock: bool = False) -> Board:
        board = Board(lease_timeout, time.monotonic if real_clock else clock)
        made.append(board)
        return board

    yield make
    for board in made:
        board.check()


def range_job(job_id: str = "j1", n: int = 10_000, chunk: int = 1000) -> JobSpec:
    return JobSpec(job_id, "squares", chunk, 0, n)


def test_range_job_is_split_into_chunks_of_chunk_size() -> None:
    spec = range_job(n=2500, chunk=1000)
    assert spec.n_chunks == 3
    assert [spec.payload(i) for i in range(3)] == [
        ("range", 0, 1000),
        ("range", 1000, 2000),
        ("range", 2000, 2500),
    ]
    assert list(spec.chunk_range(2)) == list(range(2000, 2500))


def test_item_list_chunks_are_handed_out_for_the_master_to_fill_in() -> None:
    """The board holds no items: the master loads a chunk's items from the journal."""
    spec = JobSpec("j", "squares", 2, listed=3)
    assert (spec.n_items, spec.n_chunks) == (3, 2)
    assert spec.payload(0) == spec.payload(1) == STORED
    assert spec.bounds(1) == (2, 3)
    with pytest.raises(ValueError, match="item-list job"):
        spec.chunk_range(0)


def test_a_job_larger_than_the_master_holds_is_refused_with_a_chunk_size_that_fits() -> None:
    check_size(10**9, 1000)  # 1,000,000 chunks: fine
    with pytest.raises(BadJobArguments) as err:
        check_size(10**11, 1000)
    assert str(err.value) == (
        "100,000,000,000 items in chunks of 1,000 make 100,000,000 chunks; a job has at most"
        " 10,000,000 (the master keeps one bit per chunk) — use --chunk-size 10000 or more,"
        " or split the job"
    )
    with pytest.raises(BadJobArguments) as err:
        check_size(10**15, 1000)
    assert str(err.value).endswith("— split it into jobs of at most 100,000,000,000,000 items")


def test_a_job_the_master_could_not_load_is_listed_failed_without_its_chunks(
    make_board: MakeBoard,
) -> None:
    board = make_board(10)
    huge = JobSpec("huge", "squares", 1000, 0, 10**15)
    board.add_job(huge, (), 0, JobState.FAILED, "cannot be loaded: too large", held=False)
    view = board.job_status("huge")
    assert view["state"] == "failed" and view["error"] == "cannot be loaded: too large"
    assert view["items_total"] == 10**15
    assert view["chunks"] == {"pending": 0, "leased": 0, "done": 0}
    assert board.lease("w1", 5) == [] and not board.is_chunk_done("huge", 0)
    with pytest.raises(ValueError, match="only a failed job"):
        board.add_job(range_job("x"), held=False)


def test_one_lease_call_hands_out_several_chunks(clock: Clock, make_board: MakeBoard) -> None:
    board = make_board(10)
    board.add_job(range_job(n=10_000))
    leases = board.lease("w1", 4)
    assert [(job, idx) for job, idx, *_ in leases] == [("j1", 0), ("j1", 1), ("j1", 2), ("j1", 3)]
    assert leases[0][2:4] == ("squares", ("range", 0, 1000))
    st = board.job_status("j1")
    assert st["chunks"] == {"pending": 6, "leased": 4, "done": 0}


def test_lease_spans_jobs_oldest_first_and_stops_when_empty(
    clock: Clock, make_board: MakeBoard
) -> None:
    board = make_board(10)
    board.add_job(range_job("a", n=2000))
    board.add_job(range_job("b", n=1000))
    assert [(j, i) for j, i, *_ in board.lease("w1", 5)] == [("a", 0), ("a", 1), ("b", 0)]
    assert board.lease("w1", 5) == []


def test_lease_expires_and_chunk_returns_to_pending(clock: Clock, make_board: MakeBoard) -> None:
    board = make_board(10)
    board.add_job(range_job(n=3000))
    board.lease("w1", 2)
    clock.now += 10.5
    report = board.reap()
    assert report.requeued == {"w1": 2}
    assert report.gone == ["w1"]
    assert board.job_status("j1")["chunks"] == {"pending": 3, "leased": 0, "done": 0}
    # requeued chunks come back first
    assert [i for _, i, *_ in board.lease("w2", 3)] == [0, 1, 2]


def test_heartbeat_extends_only_the_leases_the_worker_holds(
    clock: Clock, make_board: MakeBoard
) -> None:
    board = make_board(10)
    board.add_job(range_job(n=3000))
    board.lease("w1", 2)
    clock.now += 8
    board.heartbeat("w1", [("j1", 0)])  # the reply carrying chunk 1 was lost
    clock.now += 8  # 16 s after the lease, 8 s after the heartbeat
    report = board.reap()
    assert report.requeued == {"w1": 1}
    st = board.job_status("j1")
    assert st["chunks"] == {"pending": 2, "leased": 1, "done": 0}


def test_duplicates_are_dropped_and_counted(clock: Clock, make_board: MakeBoard) -> None:
    board = make_board(10)
    board.add_job(range_job(n=2000))
    board.lease("w1", 2)
    first = board.complete("w1", [("j1", 0)])
    assert first.accepted == [("j1", 0)] and first.duplicates == 0
    again = board.complete("w2", [("j1", 0), ("j1", 1)])
    assert again.accepted == [("j1", 1)] and again.duplicates == 1
    assert again.finished_jobs == ["j1"]
    st = board.job_status("j1")
    assert st["duplicates"] == 1 and st["state"] == "done" and st["items_done"] == 2000


def test_late_completion_of_an_expired_lease_is_accepted_once(
    clock: Clock, make_board: MakeBoard
) -> None:
    board = make_board(5)
    board.add_job(range_job(n=1000))
    board.lease("w1", 1)
    clock.now += 6
    board.reap()
    assert [i for _, i, *_ in board.lease("w2", 1)] == [0]
    assert board.complete("w1", [("j1", 0)]).accepted == [("j1", 0)]
    assert board.complete("w2", [("j1", 0)]).duplicates == 1
    assert board.job_status("j1")["chunks"] == {"pending": 0, "leased": 0, "done": 1}


def test_release_gives_chunks_back(clock: Clock, make_board: MakeBoard) -> None:
    board = make_board(10)
    board.add_job(range_job(n=3000))
    board.lease("w1", 3)
    assert board.release("w1", [("j1", 1), ("j1", 2)]) == 2
    assert board.release("w2", [("j1", 0)]) == 0  # not w2's to give
    assert board.job_status("j1")["chunks"] == {"pending": 2, "leased": 1, "done": 0}


def test_resume_skips_done_chunks_and_adopts_held_ones(clock: Clock, make_board: MakeBoard) -> None:
    board = make_board(10)
    board.add_job(range_job(n=6000), done=[0, 2])
    assert board.job_status("j1")["chunks"] == {"pending": 4, "leased": 0, "done": 2}
    # after a master restart a worker reports a chunk it still runs
    board.heartbeat("w1", [("j1", 4)])
    assert board.job_status("j1")["chunks"] == {"pending": 3, "leased": 1, "done": 2}
    assert [i for _, i, *_ in board.lease("w2", 10)] == [1, 3, 5]
    assert board.complete("w1", [("j1", 4)]).accepted == [("j1", 4)]
    assert board.job_status("j1")["chunks"] == {"pending": 0, "leased": 3, "done": 3}


def test_undo_complete_makes_the_chunk_pending_again(clock: Clock, make_board: MakeBoard) -> None:
    board = make_board(10)
    board.add_job(range_job(n=1000))
    board.lease("w1", 1)
    outcome = board.complete("w1", [("j1", 0)])
    board.undo_complete("w1", outcome.accepted)
    st = board.job_status("j1")
    assert st["state"] == "running" and st["chunks"] == {"pending": 1, "leased": 0, "done": 0}


def test_a_hundred_million_item_range_job_stays_small(clock: Clock, make_board: MakeBoard) -> None:
    board = make_board(10)
    tracemalloc.start()
    try:
        board.add_job(range_job("big", n=100_000_000, chunk=1000))
        leases = board.lease("w1", 8)
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert len(leases) == 8 and leases[-1][3] == ("range", 7000, 8000)
    assert peak < 1_000_000, f"peak {peak} bytes"
    assert board.job_status("big")["chunks"]["pending"] == 100_000 - 8


def test_waiting_lease_wakes_when_a_job_arrives(make_board: MakeBoard) -> None:
    board = make_board(10, real_clock=True)
    got: list[int] = []
    t = threading.Thread(target=lambda: got.extend(i for _, i, *_ in board.lease("w1", 2, wait=5)))
    t.start()
    board.add_job(range_job(n=5000))
    t.join(timeout=5)
    assert got == [0, 1]


def test_status_lists_only_workers_seen_within_the_lease_timeout(
    clock: Clock, make_board: MakeBoard
) -> None:
    board = make_board(10)
    board.note_seen("w1", "hostA")
    clock.now += 5
    board.note_seen("w2", "hostB")
    assert [w["name"] for w in board.status()["workers"]] == ["w1", "w2"]
    clock.now += 6
    assert [w["name"] for w in board.status()["workers"]] == ["w2"]
    board.forget_worker("w2")
    assert board.status()["workers"] == []


def test_note_seen_says_when_a_worker_joins_or_comes_back(
    clock: Clock, make_board: MakeBoard
) -> None:
    board = make_board(10)
    assert board.note_seen("w1", "hostA") is True
    assert board.note_seen("w1") is False
    clock.now += 11
    assert board.reap().gone == ["w1"]
    assert board.note_seen("w1") is True


def test_a_workers_job_packages_stay_until_its_next_hello_and_a_job_shows_its_code(
    make_board: MakeBoard,
) -> None:
    board = make_board(10)
    board.note_seen("w1", "hostA", 2, {"taskfleet-primes": "1.0.0"})
    board.note_seen("w1", "hostA")  # a heartbeat: what it said at hello stays
    assert board.status()["workers"][0]["job_packages"] == {"taskfleet-primes": "1.0.0"}
    board.note_seen("w1", "hostA", 2, {"taskfleet-primes": "1.1.0"})  # back after an upgrade
    assert board.status()["workers"][0]["job_packages"] == {"taskfleet-primes": "1.1.0"}

    spec = JobSpec("j1", "primes", 10, 0, 100, code_version="taskfleet-primes 1.1.0")
    board.add_job(spec)
    assert board.job_status("j1")["code_version"] == "taskfleet-primes 1.1.0"
    assert JobSpec.from_wire(spec.as_wire()) == spec


def test_check_catches_a_counter_that_drifted() -> None:
    board = Board(10)
    board.add_job(range_job(n=5000))
    board.lease("w1", 2)
    board.check()
    board._jobs["j1"].leased_ahead += 1  # what a bookkeeping bug would do
    with pytest.raises(AssertionError, match=r"leased_ahead 1 != 0; pending 2 != 3"):
        board.check()


def test_random_operations_keep_every_invariant_and_finish_every_chunk(
    clock: Clock, make_board: MakeBoard
) -> None:
    """Leases, heartbeats, expiries, releases, duplicates and undos in a seeded random
    order; the board is checked after every step, and in the end every chunk is done once."""
    rng = random.Random(20261203)
    board = make_board(10)
    board.add_job(range_job("a", n=50_000, chunk=1000))
    board.add_job(JobSpec("b", "squares", 3, listed=100), done=[0, 5, 7])
    held: dict[str, list[ChunkId]] = {"w1": [], "w2": [], "w3": []}
    accepted: list[ChunkId] = []
    for _ in range(3000):
        worker = rng.choice(list(held))
        op = rng.random()
        if op < 0.35:
            held[worker] += [ChunkId(j, i) for j, i, *_ in board.lease(worker, rng.randint(1, 4))]
        elif op < 0.65 and held[worker]:
            some = rng.sample(held[worker], rng.randint(1, len(held[worker])))
            outcome = board.complete(worker, some)
            if rng.random() < 0.05:
                board.undo_complete(worker, outcome.accepted)  # the journal write failed
            else:
                accepted += outcome.accepted
            held[worker] = [c for c in held[worker] if c not in some]
        elif op < 0.75 and held[worker]:
            board.release(worker, held[worker][:1])
            held[worker] = held[worker][1:]
        elif op < 0.9:
            board.heartbeat(worker, held[worker])
        else:
            clock.now += rng.choice([1, 6, 11])
            board.reap()
        board.check()
    for _ in range(1000):  # one worker finishes what is left
        leases = board.lease("w9", 8)
        if not leases:
            clock.now += 11
            board.reap()
            if not board.lease("w9", 1, wait=0) and all(
                board.job_status(j)["state"] == JobState.DONE for j in ("a", "b")
            ):
                break
            continue
        accepted += board.complete("w9", [ChunkId(j, i) for j, i, *_ in leases]).accepted
        board.check()
    assert board.job_status("a")["state"] == JobState.DONE
    assert board.job_status("b")["state"] == JobState.DONE
    assert len(accepted) == len(set(accepted)) == 50 + 34 - 3


# -- failures, retries, cancel ----------------------------------------------------------


def failing_job(
    job_id: str = "f", n: int = 3000, retries: int = 2, on_error: str = "fail"
) -> JobSpec:
    return JobSpec(job_id, "squares", 1000, 0, n, retries=retries, on_error=on_error)


def test_a_job_is_pending_until_a_chunk_is_handed_out(clock: Clock, make_board: MakeBoard) -> None:
    board = make_board(10)
    board.add_job(range_job(n=2000))
    assert board.job_status("j1")["state"] == "pending"
    board.lease("w1", 1)
    assert board.job_status("j1")["state"] == "running"


def test_a_failed_chunk_runs_again_then_fails_the_job_after_its_retries(
    clock: Clock, make_board: MakeBoard
) -> None:
    board = make_board(10)
    board.add_job(failing_job(retries=2))
    for attempt in (1, 2):
        leases = board.lease("w1", 1)
        assert [lease.chunk for lease in leases] == [0]
        out = board.complete("w1", [ChunkId("f", 0)], failed={ChunkId("f", 0): 1})
        assert out.retried == [("f", 0)] and out.attempts == {("f", 0): attempt}
        assert out.accepted == [] and board.job_status("f")["state"] == "running"
    board.lease("w1", 3)  # chunk 0 for the third time, and chunks 1 and 2
    out = board.complete("w1", [ChunkId("f", 0)], failed={ChunkId("f", 0): 2}, errors={})
    assert out.failed_jobs == {"f": ("f", 0)} and out.attempts == {("f", 0): 3}
    st = board.job_status("f")
    assert st["state"] == "failed" and st["items_failed"] == 2 and st["finished"] is not None
    assert st["chunks"] == {"pending": 0, "leased": 0, "done": 0}
    assert board.lease("w2", 5) == [], "a failed job hands out nothing more"
    # late results of its other chunks are dropped
    assert board.complete("w1", [ChunkId("f", 1)]).duplicates == 1


def test_a_retried_chunk_waits_for_another_connected_worker_first(
    clock: Clock, make_board: MakeBoard
) -> None:
    board = make_board(10)
    board.add_job(failing_job(n=3000))
    board.note_seen("w2")
    assert [lease.chunk for lease in board.lease("w1", 1)] == [0]
    board.complete("w1", [ChunkId("f", 0)], failed={ChunkId("f", 0): 1})
    # w1 failed chunk 0 and w2 is connected: w1 gets the next chunks, w2 gets chunk 0
    assert [lease.chunk for lease in board.lease("w1", 1)] == [1]
    assert [lease.chunk for lease in board.lease("w2", 1)] == [0]


def test_a_retried_chunk_goes_back_to_the_same_worker_when_it_is_alone_or_after_a_while(
    clock: Clock, make_board: MakeBoard
) -> None:
    board = make_board(10)
    board.add_job(failing_job(n=5000))
    board.lease("w1", 1)
    board.complete("w1", [ChunkId("f", 0)], failed={ChunkId("f", 0): 1})
    assert [lease.chunk for lease in board.lease("w1", 1)] == [0], "no other worker"
    board.note_seen("w2")
    board.complete("w1", [ChunkId("f", 0)], failed={ChunkId("f", 0): 1})
    assert [lease.chunk for lease in board.lease("w1", 1)] == [1], "w2 may take it"
    clock.now += 10.5  # w2 never came for it (and went silent)
    board.note_seen("w1")
    assert [lease.chunk for lease in board.lease("w1", 1)] == [0]


def test_skip_keeps_the_chunk_with_its_failed_items_after_the_retries(
    clock: Clock, make_board: MakeBoard
) -> None:
    board = make_board(10)
    board.add_job(failing_job(n=2000, retries=1, on_error="skip"))
    board.lease("w1", 2)
    first = board.complete("w1", [ChunkId("f", 0), ChunkId("f", 1)], failed={ChunkId("f", 0): 3})
    assert first.retried == [("f", 0)] and first.accepted == [("f", 1)]
    board.lease("w1", 1)
    second = board.complete("w1", [ChunkId("f", 0)], failed={ChunkId("f", 0): 3})
    assert second.skipped == {("f", 0): 3} and second.accepted == [("f", 0)]
    assert second.finished_jobs == ["f"]
    st = board.job_status("f")
    assert (st["state"], st["items_done"], st["items_failed"]) == ("done", 2000, 3)


def test_undoing_a_skipped_chunk_takes_back_its_failed_items(
    clock: Clock, make_board: MakeBoard
) -> None:
    board = make_board(10)
    board.add_job(failing_job(n=1000, retries=0, on_error="skip"))
    board.lease("w1", 1)
    out = board.complete("w1", [ChunkId("f", 0)], failed={ChunkId("f", 0): 4})
    board.undo_complete("w1", out.accepted, out.skipped)
    st = board.job_status("f")
    assert (st["state"], st["items_failed"], st["finished"]) == ("running", 0, None)


def test_cancel_stops_the_job_and_tells_the_workers_holding_its_chunks(
    clock: Clock, make_board: MakeBoard
) -> None:
    board = make_board(10)
    board.add_job(range_job("c", n=100_000_000))
    board.add_job(range_job("other", n=1000))
    board.lease("w1", 2)
    assert board.cancel_job("c") is True
    assert board.cancel_job("c") is False, "cancelled once"
    st = board.job_status("c")
    assert st["state"] == "cancelled" and st["chunks"] == {"pending": 0, "leased": 0, "done": 0}
    held = [ChunkId("c", 0), ChunkId("c", 1)]
    assert board.heartbeat("w1", held) == held
    assert board.to_stop([*held, ChunkId("other", 0)]) == held
    assert [(lease.job_id, lease.chunk) for lease in board.lease("w1", 5)] == [("other", 0)]
    assert board.complete("w1", [ChunkId("c", 0)]).duplicates == 1, "later results are dropped"


def test_a_finished_job_cannot_be_cancelled(clock: Clock, make_board: MakeBoard) -> None:
    board = make_board(10)
    board.add_job(range_job(n=1000))
    board.lease("w1", 1)
    board.complete("w1", [ChunkId("j1", 0)])
    assert board.cancel_job("j1") is False
    assert board.job_status("j1")["state"] == "done"


def test_a_worker_is_told_to_stop_a_chunk_another_worker_finished(
    clock: Clock, make_board: MakeBoard
) -> None:
    board = make_board(5)
    board.add_job(range_job(n=2000))
    board.lease("w1", 1)
    clock.now += 6
    board.reap()
    board.lease("w2", 1)
    board.complete("w2", [ChunkId("j1", 0)])
    assert board.heartbeat("w1", [ChunkId("j1", 0)]) == [("j1", 0)]


def test_jobs_are_listed_newest_first_and_status_bounds_the_finished_ones(
    clock: Clock, make_board: MakeBoard
) -> None:
    board = make_board(10)
    for k in range(30):
        board.add_job(range_job(f"done{k:02}", n=10, chunk=10), state=JobState.DONE)
    board.add_job(range_job("live", n=10, chunk=10))
    listed = board.jobs(5)
    assert [j["id"] for j in listed["jobs"]] == ["live", "done29", "done28", "done27", "done26"]
    assert listed["total"] == 31
    view = board.status(finished_limit=3)
    assert [j["id"] for j in view["jobs"]] == ["done27", "done28", "done29", "live"]
    assert view["not_listed"] == 27
    # The counts by state cover every job, the ones left out of the list too.
    assert view["by_state"] == {
        "pending": 1,
        "running": 0,
        "done": 30,
        "failed": 0,
        "cancelled": 0,
    }


def test_only_finished_jobs_are_removed(clock: Clock, make_board: MakeBoard) -> None:
    board = make_board(10)
    board.add_job(range_job("old", n=10, chunk=10), state=JobState.DONE, finished=5.0)
    board.add_job(range_job("live", n=10, chunk=10))
    assert board.finished_jobs() == [("old", 5.0)]
    assert board.remove_job("live") is False
    assert board.remove_job("old") is True
    assert not board.has_job("old") and board.jobs(10)["total"] == 1


def test_attempts_resume_from_the_journal(clock: Clock, make_board: MakeBoard) -> None:
    board = make_board(10)
    board.add_job(failing_job(retries=2), attempts={0: (2, {"w1"})})
    board.lease("w2", 1)
    out = board.complete("w2", [ChunkId("f", 0)], failed={ChunkId("f", 0): 1})
    assert out.failed_jobs == {"f": ("f", 0)} and out.attempts == {("f", 0): 3}


def test_a_stepped_range_job_is_sent_as_ranges(clock: Clock, make_board: MakeBoard) -> None:
    spec = JobSpec("s", "squares", 3, 10, 0, step=-2)
    assert spec.n_items == 5 and spec.n_chunks == 2
    assert [spec.payload(i) for i in range(2)] == [("range", 10, 4, -2), ("range", 4, 0, -2)]
    assert list(spec.chunk_range(1)) == [4, 2]


def test_random_failures_and_cancels_keep_every_invariant(
    clock: Clock, make_board: MakeBoard
) -> None:
    """Failed attempts, retries, skips, failed and cancelled jobs in a seeded random order;
    the board is checked after every step and every job reaches an end state."""
    rng = random.Random(11)
    board = make_board(10)
    for k in range(6):
        on_error = "skip" if k % 2 else "fail"
        board.add_job(JobSpec(f"j{k}", "squares", 10, 0, 400, retries=k % 3, on_error=on_error))
    workers = ["w1", "w2", "w3"]
    held: dict[str, list[ChunkId]] = {w: [] for w in workers}
    for _ in range(4000):
        worker = rng.choice(workers)
        op = rng.random()
        if op < 0.4:
            held[worker] += [ChunkId(j, i) for j, i, *_ in board.lease(worker, rng.randint(1, 3))]
        elif op < 0.8 and held[worker]:
            some = rng.sample(held[worker], rng.randint(1, len(held[worker])))
            failed = {c: rng.randint(1, 10) for c in some if rng.random() < 0.2}
            out = board.complete(worker, some, failed=failed)
            if rng.random() < 0.03:
                board.undo_complete(worker, out.accepted, out.skipped)
            held[worker] = [c for c in held[worker] if c not in some]
        elif op < 0.85:
            board.heartbeat(worker, held[worker])
        elif op < 0.86:
            board.cancel_job(f"j{rng.randint(0, 5)}")
        else:
            clock.now += rng.choice([1, 6, 11])
            board.reap()
        board.check()
        if all(JobState(board.job_status(f"j{k}")["state"]).finished for k in range(6)):
            break
    else:
        raise AssertionError("jobs still running after 4000 steps")


def test_a_failed_attempt_reported_twice_spends_one_retry(
    clock: Clock, make_board: MakeBoard
) -> None:
    board = make_board(10)
    board.add_job(failing_job(retries=1))
    board.lease("w1", 1)
    report = {ChunkId("f", 0): 1}
    assert board.complete("w1", [ChunkId("f", 0)], failed=report).retried == [("f", 0)]
    again = board.complete("w1", [ChunkId("f", 0)], failed=report)  # the reply was lost
    assert again.attempts == {} and again.duplicates == 1
    assert board.job_status("f")["state"] == "running"

"""The journal: what is written survives a reopen, and a board resumes from it."""

from __future__ import annotations

import pickle
from pathlib import Path

import pytest

from taskfleet.board import Board, JobSpec
from taskfleet.errors import JournalError
from taskfleet.journal import Journal
from taskfleet.protocol import JobState


def test_jobs_and_results_survive_a_reopen(tmp_path: Path) -> None:
    path = str(tmp_path / "j.db")
    j = Journal(path)
    ranged = JobSpec("r1", "squares", 1000, 0, 2500, created=1.0)
    listed = JobSpec("i1", "squares", 2, items=[3, 4, 5], created=2.0)
    j.add_job(ranged)
    j.add_job(listed)
    j.record_done([("r1", 1, "w1", "hostA", pickle.dumps([1, 2]))], {"r1": 2})
    j.set_state("i1", JobState.FAILED, "boom")
    j.close()

    j = Journal(path)
    jobs = j.jobs()
    assert [(s.id, state, err, dups) for s, state, err, dups, *_ in jobs] == [
        ("r1", "running", None, 2),
        ("i1", "failed", "boom", 0),
    ]
    assert jobs[0][0] == ranged
    assert list(jobs[1][0].items or []) == [3, 4, 5]
    assert list(j.done_chunks("r1")) == [1]
    rows = j.fetch("r1", 0, 10_000, 1000)
    assert [(c, w, h, pickle.loads(b)) for _, c, w, h, b, _ in rows] == [(1, "w1", "hostA", [1, 2])]
    assert j.fetch("r1", rows[0][0], 10_000, 1000) == []
    j.close()


def test_a_chunk_cannot_be_journaled_twice(tmp_path: Path) -> None:
    j = Journal(str(tmp_path / "j.db"))
    j.add_job(JobSpec("r1", "squares", 10, 0, 20))
    j.record_done([("r1", 0, "w1", "h", b"x")])
    with pytest.raises(Exception, match="UNIQUE"):
        j.record_done([("r1", 0, "w2", "h", b"y")])
    assert [c for _, c, *_ in j.fetch("r1", 0, 100, 10)] == [0]


def test_board_resumes_from_the_journal(tmp_path: Path) -> None:
    path = str(tmp_path / "j.db")
    j = Journal(path)
    j.add_job(JobSpec("r1", "squares", 10, 0, 50))
    j.record_done([("r1", i, "w1", "h", b"r") for i in (0, 3)])
    j.close()

    j = Journal(path)
    board = Board(10)
    for spec, state, error, dups, *_ in j.jobs():
        board.add_job(spec, j.done_chunks(spec.id), dups, state, error)
    assert board.job_status("r1")["chunks"] == {"pending": 3, "leased": 0, "done": 2}
    assert [i for _, i, *_ in board.lease("w", 10)] == [1, 2, 4]


def test_journal_in_a_missing_directory_is_a_one_line_error(tmp_path: Path) -> None:
    with pytest.raises(JournalError) as err:
        Journal(str(tmp_path / "nope" / "j.db"))
    assert str(err.value) == (
        f"cannot open journal {tmp_path}/nope/j.db: directory {tmp_path}/nope does not exist"
        " — give a --journal path in a writable directory"
        " (containers: the /var/lib/taskfleet volume)"
    )

"""The journal: what is written survives a reopen, and a board resumes from it."""

from __future__ import annotations

import pickle
import sqlite3
from pathlib import Path

import pytest

from taskfleet.board import Board, JobSpec
from taskfleet.errors import JournalError
from taskfleet.journal import DoneRow, ErrorRow, Journal
from taskfleet.protocol import JobState


def test_jobs_and_results_survive_a_reopen(tmp_path: Path) -> None:
    path = str(tmp_path / "j.db")
    j = Journal(path)
    ranged = JobSpec("r1", "squares", 1000, 0, 2500, created=1.0, code_version="taskfleet 0.2.0")
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


# The schema a version-2 master wrote (before job control).
OLD_SCHEMA = """
CREATE TABLE jobs (id TEXT PRIMARY KEY, job TEXT NOT NULL, chunk_size INTEGER NOT NULL,
    start INTEGER NOT NULL, stop INTEGER NOT NULL, items BLOB, created REAL NOT NULL,
    state TEXT NOT NULL DEFAULT 'running', error TEXT, duplicates INTEGER NOT NULL DEFAULT 0);
CREATE TABLE done (seq INTEGER PRIMARY KEY AUTOINCREMENT, job_id TEXT NOT NULL,
    chunk INTEGER NOT NULL, worker TEXT NOT NULL, host TEXT NOT NULL, results BLOB NOT NULL,
    UNIQUE (job_id, chunk));
"""


def test_a_journal_from_the_previous_version_opens_and_keeps_its_jobs(tmp_path: Path) -> None:
    path = tmp_path / "old.db"
    with sqlite3.connect(path) as conn:
        conn.executescript(OLD_SCHEMA)
        conn.execute(
            "INSERT INTO jobs (id, job, chunk_size, start, stop, created) VALUES"
            " ('r1', 'squares', 10, 0, 30, 1.0)"
        )
        conn.execute(
            "INSERT INTO done (job_id, chunk, worker, host, results) VALUES"
            " ('r1', 1, 'w', 'h', x'80')"
        )
    conn.close()
    j = Journal(str(path))
    (job,) = j.jobs()
    assert job.spec == JobSpec("r1", "squares", 10, 0, 30, created=1.0)
    assert (job.state, job.items_failed, job.finished) == (JobState.RUNNING, 0, None)
    assert [(r.chunk, r.failed) for r in j.fetch("r1", 0, 100, 10)] == [(1, 0)]
    assert j.incremental is False, "an existing file keeps its vacuum mode"
    j.close()


def test_the_ordered_fetch_stops_at_the_first_chunk_not_done(tmp_path: Path) -> None:
    j = Journal(str(tmp_path / "j.db"))
    j.add_job(JobSpec("r1", "squares", 10, 0, 100))
    j.record_done([DoneRow("r1", i, "w", "h", pickle.dumps([i])) for i in (0, 1, 2, 4, 5)])
    assert [r.chunk for r in j.fetch_ordered("r1", 0, 1000, 10)] == [0, 1, 2]
    assert [r.chunk for r in j.fetch_ordered("r1", 1, 20, 10)] == [1, 2], "about max_items"
    assert j.fetch_ordered("r1", 3, 1000, 10) == []
    assert [r.chunk for r in j.fetch_ordered("r1", 4, 1000, 10)] == [4, 5]
    j.close()


def test_failures_are_journaled_with_the_results_and_resume_the_attempts(tmp_path: Path) -> None:
    path = str(tmp_path / "j.db")
    j = Journal(path)
    j.add_job(JobSpec("r1", "squares", 10, 0, 30, retries=3, on_error="skip", item_timeout=2.5))
    errors = [
        ErrorRow("r1", 1, 17, 1, False, "w1", "hA", "exception", "ValueError", "bad", "17", "tb"),
        ErrorRow("r1", 1, 17, 2, False, "w2", "hB", "crash", "", "died", "17", ""),
    ]
    j.record_done([], errors=errors)
    j.record_done(
        [DoneRow("r1", 1, "w3", "hC", b"x")],
        failed={("r1", 1): 1},
        items_failed={"r1": 1},
        errors=[errors[0]._replace(attempt=3, final=True, worker="w3")],
    )
    j.close()
    j = Journal(path)
    (job,) = j.jobs()
    assert (job.spec.retries, job.spec.on_error, job.spec.item_timeout) == (3, "skip", 2.5)
    assert job.items_failed == 1
    assert j.attempts("r1") == {1: (3, {"w1", "w2", "w3"})}
    assert j.error_counts() == {"r1": 3}
    views = j.errors("r1", 10)
    assert [(e["attempt"], e["final"], e["kind"], e["worker"]) for e in views] == [
        (1, False, "exception", "w1"),
        (2, False, "crash", "w2"),
        (3, True, "exception", "w3"),
    ]
    assert views[0]["traceback"] == "tb" and views[0]["index"] == 17
    assert [r.failed for r in j.fetch("r1", 0, 100, 10)] == [1]
    j.close()


def test_a_finished_state_records_when_it_finished(tmp_path: Path) -> None:
    j = Journal(str(tmp_path / "j.db"))
    j.add_job(JobSpec("r1", "squares", 10, 0, 30))
    j.set_state("r1", JobState.CANCELLED)
    (job,) = j.jobs()
    assert job.state == JobState.CANCELLED and job.finished is not None
    j.close()


def test_pruning_deletes_a_job_in_batches_and_gives_the_space_back(tmp_path: Path) -> None:
    j = Journal(str(tmp_path / "j.db"))
    assert j.incremental, "a new journal can give space back"
    j.add_job(JobSpec("big", "squares", 10, 0, 10_000))
    j.add_job(JobSpec("kept", "squares", 10, 0, 10))
    blob = pickle.dumps(list(range(1000, 3000)))  # about 6 KB per chunk
    j.record_done([DoneRow("big", i, "w", "h", blob) for i in range(1000)])
    j.record_done([DoneRow("kept", 0, "w", "h", blob)])
    j.record_done([], errors=[ErrorRow("big", 0, 0, 1, True, "w", "h", "crash", "", "", "0", "")])
    pages_before, _ = j.size()
    steps = 0
    while not j.delete_job_step("big", batch=100):
        steps += 1
    assert steps == 10, "1,000 rows in batches of 100"
    assert [s.id for s, *_ in j.jobs()] == ["kept"] and j.errors("big", 10) == []
    while j.vacuum_step(pages=64):
        pass
    pages_after, free = j.size()
    assert free == 0 and pages_after < pages_before / 5, (pages_before, pages_after)
    assert [r.chunk for r in j.fetch("kept", 0, 100, 10)] == [0]
    j.close()

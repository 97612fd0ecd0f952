"""The journal: what is written survives a reopen, and a board resumes from it."""

from __future__ import annotations

import pickle
import random
import sqlite3
from pathlib import Path

import pytest

from taskfleet.board import Board, JobSpec
from taskfleet.errors import JournalDamaged, JournalError
from taskfleet.journal import DoneRow, ErrorRow, Journal
from taskfleet.protocol import JobState


def test_jobs_and_results_survive_a_reopen(tmp_path: Path) -> None:
    path = str(tmp_path / "j.db")
    j = Journal(path)
    ranged = JobSpec("r1", "squares", 1000, 0, 2500, created=1.0, code_version="taskfleet 0.2.0")
    listed = JobSpec("i1", "squares", 2, listed=3, created=2.0)
    j.add_job(ranged)
    j.add_job(listed, [pickle.dumps([3, 4]), pickle.dumps([5])])
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
    assert jobs[1][0] == listed
    stored = j.chunk_items("i1", [0, 1, 2])
    assert {c: pickle.loads(b) for c, b in stored.items()} == {0: [3, 4], 1: [5]}
    assert list(j.done_chunks("r1")) == [1]
    rows = j.fetch("r1", 0, 10_000, 1000)
    assert [(r.chunk, r.worker, r.host, pickle.loads(r.blob)) for r in rows] == [
        (1, "w1", "hostA", [1, 2])
    ]
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


def test_an_upload_is_journaled_batch_by_batch_and_resumes_after_a_reopen(tmp_path: Path) -> None:
    path = str(tmp_path / "j.db")
    j = Journal(path)
    spec = JobSpec("u1", "squares", 2, listed=0, created=1.0)
    j.open_upload(spec)
    j.append_upload("u1", 0, 0, [pickle.dumps([1, 2]), pickle.dumps([3, 4])], 4)
    with pytest.raises(JournalError, match="not at batch 0"):
        j.append_upload("u1", 0, 0, [pickle.dumps([9, 9])], 6)  # a resent batch adds nothing
    j.close()

    j = Journal(path)
    (job,) = j.jobs()
    assert (job.upload_seq, job.spec.listed, job.problem) == (1, 4, None)
    j.append_upload("u1", 1, 2, [pickle.dumps([5])], 5)
    j.seal_upload("u1")
    (job,) = j.jobs()
    assert (job.upload_seq, job.state, job.spec.n_items, job.spec.n_chunks) == (
        None,
        JobState.RUNNING,
        5,
        3,
    )
    stored = j.chunk_items("u1", [0, 1, 2])
    assert [pickle.loads(stored[c]) for c in range(3)] == [[1, 2], [3, 4], [5]]
    j.close()


def test_results_can_be_fetched_with_their_chunks_items(tmp_path: Path) -> None:
    j = Journal(str(tmp_path / "j.db"))
    j.add_job(JobSpec("i1", "squares", 2, listed=3), [pickle.dumps([3, 4]), pickle.dumps([5])])
    j.record_done([DoneRow("i1", 1, "w", "h", pickle.dumps([25]))])
    (row,) = j.fetch("i1", 0, 100, 2, items=True)
    assert (row.chunk, pickle.loads(row.blob), pickle.loads(row.items or b"")) == (1, [25], [5])
    (row,) = j.fetch_ordered("i1", 1, 100, 2, items=True)
    assert pickle.loads(row.items or b"") == [5]
    assert j.fetch("i1", 0, 100, 2)[0].items is None, "only when asked for"
    j.close()


def test_pruning_an_item_list_job_deletes_its_stored_items_too(tmp_path: Path) -> None:
    j = Journal(str(tmp_path / "j.db"))
    j.add_job(JobSpec("i1", "squares", 1, listed=5), [pickle.dumps([k]) for k in range(5)])
    steps = 0
    while not j.delete_job_step("i1", batch=2):
        steps += 1
    assert steps == 3 and j.jobs() == [] and j.chunk_items("i1", [0, 4]) == {}
    j.close()


def _old_journal(path: Path, *rows: tuple[str, bytes | None, str]) -> None:
    """A journal as a version-2 master wrote it: ``rows`` are (id, items blob, state)."""
    with sqlite3.connect(path) as conn:
        conn.executescript(OLD_SCHEMA)
        for job_id, items, state in rows:
            conn.execute(
                "INSERT INTO jobs (id, job, chunk_size, start, stop, items, created, state)"
                " VALUES (?, 'squares', 2, 0, 0, ?, 1.0, ?)",
                (job_id, items, state),
            )
    conn.close()


def test_an_older_journals_item_lists_move_into_one_row_per_chunk(tmp_path: Path) -> None:
    path = tmp_path / "old.db"
    _old_journal(path, ("i1", pickle.dumps([3, 4, 5]), "running"))
    j = Journal(str(path))
    (job,) = j.jobs()
    assert (job.spec.listed, job.spec.n_chunks, job.problem) == (3, 2, None)
    stored = j.chunk_items("i1", [0, 1])
    assert [pickle.loads(stored[c]) for c in (0, 1)] == [[3, 4], [5]]
    j.close()
    with sqlite3.connect(path) as conn:
        assert conn.execute("SELECT items, listed FROM jobs").fetchone() == (None, 3)
    conn.close()


def test_a_job_whose_row_cannot_be_loaded_is_reported_not_raised(tmp_path: Path) -> None:
    path = tmp_path / "old.db"
    _old_journal(
        path,
        ("bad-items", b"\x80\x05not a pickle", "running"),
        ("bad-state", None, "sideways"),
        ("good", pickle.dumps([1]), "done"),
    )
    with sqlite3.connect(path) as conn:
        conn.execute(
            "INSERT INTO jobs (id, job, chunk_size, start, stop, created)"
            " VALUES ('no-chunks', 'squares', 0, 0, 10, 2.0)"
        )
    conn.close()
    j = Journal(str(path))
    loaded = {job.spec.id: job.problem for job in j.jobs()}
    assert loaded["good"] is None
    assert loaded["bad-items"] is not None and loaded["bad-items"].startswith(
        "its items cannot be read (UnpicklingError: "
    )
    assert loaded["bad-state"] == "its journal row is invalid ('sideways' is not a valid JobState)"
    assert loaded["no-chunks"] == "its chunk size 0 is below 1"
    j.close()


def _refused(path: Path) -> str:
    with pytest.raises(JournalDamaged) as err:
        Journal(str(path))
    return str(err.value)


FIX = (
    " — move it and its -wal/-shm files aside, then start again;"
    " taskfleet journal check FILE tells what is recoverable"
)


def test_a_file_of_random_bytes_is_refused_in_one_line_and_left_as_it_was(tmp_path: Path) -> None:
    path = tmp_path / "j.db"
    data = random.Random(7).randbytes(20_000)
    path.write_bytes(data)
    assert _refused(path) == (
        f"journal {path} is not a taskfleet journal (file is not a database)" + FIX
    )
    assert path.read_bytes() == data


def test_someone_elses_sqlite_database_is_refused_and_not_changed(tmp_path: Path) -> None:
    path = tmp_path / "app.db"
    with sqlite3.connect(path) as conn:
        conn.execute("CREATE TABLE users (name TEXT)")
        conn.execute("INSERT INTO users VALUES ('ada')")
    conn.close()
    before = path.read_bytes()
    assert _refused(path) == (
        f"journal {path} is not a taskfleet journal (an SQLite database with the tables users)"
        + FIX
    )
    assert path.read_bytes() == before, "no table added, not switched to WAL"
    assert not (tmp_path / "app.db-wal").exists()


def test_a_truncated_journal_is_refused_as_damaged(tmp_path: Path) -> None:
    path = tmp_path / "j.db"
    j = Journal(str(path))
    j.add_job(JobSpec("r1", "squares", 10, 0, 100_000))
    j.record_done([DoneRow("r1", i, "w", "h", b"r" * 3000) for i in range(500)])
    j.close()  # the last connection checkpoints the WAL into the file
    with open(path, "r+b") as fh:
        fh.truncate(path.stat().st_size // 2)
    assert _refused(path) == f"journal {path} is damaged (database disk image is malformed)" + FIX

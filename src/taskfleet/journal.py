"""The journal: SQLite in WAL mode, written before anything is acknowledged.

Tables: ``jobs`` (the submission, options, state, counters; ``listed`` is the
number of items of an item-list job), ``chunk_items`` (an item-list job's
items, one pickled list per chunk: no value grows with the job, and the
master loads one chunk when it leases it), ``done`` (one row per accepted
chunk: who ran it, its pickled results and how many of its items failed) and
``errors`` (item failures with their tracebacks, at most
``defaults.MAX_JOB_ERRORS`` per job). ``done.seq`` orders results by
completion: a client resumes a result stream from the last ``seq`` it saw,
across master restarts; ``UNIQUE(job_id, chunk)`` serves the ordered stream
(by chunk index).

Uploads: a job whose items are still arriving has ``state = 'open'`` (a value
only the journal uses) and ``upload_seq``, the next batch it expects; its
chunks are written batch by batch with that counter, in one transaction each.

Older journals open as they are: missing columns and tables are added, and
the items an older master kept in ``jobs.items`` (one pickled list per job)
are moved into ``chunk_items`` when the job is loaded. A job that cannot be
loaded (unreadable items, impossible values) is reported with the reason
(:attr:`JournaledJob.problem`) instead of stopping the master. A file that is
not a taskfleet journal, or is damaged, is refused (``JournalDamaged``)
before anything is written to it.

Retention: :meth:`Journal.delete_job_step` deletes a job's rows a batch at a
time (the write lock is never held for long), and new journals use
``auto_vacuum=INCREMENTAL`` so :meth:`Journal.vacuum_step` returns the freed
pages to the file system a few at a time. A journal made before that keeps
its free pages for reuse (SQLite needs a full VACUUM to switch, which would
stall the master).

Durability: ``synchronous=NORMAL`` in WAL mode survives a killed master
process (the case the runtime promises); a power cut may lose the last
commits. One transaction per ``complete`` call (executemany) keeps the
journal off the critical path.
"""

from __future__ import annotations

import dataclasses
import os
import sqlite3
import threading
import time
from array import array
from collections.abc import Iterable, Mapping, Sequence
from typing import Any, NamedTuple

from taskfleet import defaults, safepickle
from taskfleet.board import JobSpec
from taskfleet.errors import JournalDamaged, JournalError
from taskfleet.jobs import pickle_items
from taskfleet.protocol import ErrorView, JobState, OnError, ResultRow

_SCHEMA = """
CREATE TABLE IF NOT EXISTS jobs (
    id TEXT PRIMARY KEY,
    job TEXT NOT NULL,
    chunk_size INTEGER NOT NULL,
    start INTEGER NOT NULL,
    stop INTEGER NOT NULL,
    items BLOB,
    created REAL NOT NULL,
    state TEXT NOT NULL DEFAULT 'running',
    error TEXT,
    duplicates INTEGER NOT NULL DEFAULT 0
);
CREATE TABLE IF NOT EXISTS done (
    seq INTEGER PRIMARY KEY AUTOINCREMENT,
    job_id TEXT NOT NULL,
    chunk INTEGER NOT NULL,
    worker TEXT NOT NULL,
    host TEXT NOT NULL,
    results BLOB NOT NULL,
    UNIQUE (job_id, chunk)
);
CREATE INDEX IF NOT EXISTS done_by_job_seq ON done (job_id, seq);
CREATE TABLE IF NOT EXISTS errors (
    id INTEGER PRIMARY KEY AUTOINCREMENT,
    job_id TEXT NOT NULL,
    chunk INTEGER NOT NULL,
    position INTEGER NOT NULL,
    attempt INTEGER NOT NULL,
    final INTEGER NOT NULL,
    worker TEXT NOT NULL,
    host TEXT NOT NULL,
    kind TEXT NOT NULL,
    type TEXT NOT NULL,
    message TEXT NOT NULL,
    item TEXT NOT NULL,
    traceback TEXT NOT NULL,
    time REAL NOT NULL
);
CREATE INDEX IF NOT EXISTS errors_by_job ON errors (job_id, id);
CREATE TABLE IF NOT EXISTS chunk_items (
    job_id TEXT NOT NULL,
    chunk INTEGER NOT NULL,
    items BLOB NOT NULL,
    PRIMARY KEY (job_id, chunk)
);
"""

OPEN = "open"
"""``jobs.state`` of a job whose items are still being uploaded (never shown as a job)."""

# What makes a file a taskfleet journal (any version): these tables with these columns.
_JOURNAL_COLUMNS = {
    "jobs": {"id", "job", "chunk_size", "start", "stop", "created", "state"},
    "done": {"seq", "job_id", "chunk", "worker", "host", "results"},
}

# Columns added after the first release: (table, column, declaration). A journal
# written by an older master gets them at open, with these defaults.
_ADDED_COLUMNS = (
    ("jobs", "step", "INTEGER NOT NULL DEFAULT 1"),
    ("jobs", "retries", f"INTEGER NOT NULL DEFAULT {defaults.RETRIES}"),
    ("jobs", "on_error", f"TEXT NOT NULL DEFAULT '{defaults.ON_ERROR}'"),
    ("jobs", "item_timeout", "REAL"),
    ("jobs", "items_failed", "INTEGER NOT NULL DEFAULT 0"),
    ("jobs", "finished", "REAL"),
    ("jobs", "code_version", "TEXT NOT NULL DEFAULT ''"),
    ("done", "failed", "INTEGER NOT NULL DEFAULT 0"),
    ("jobs", "listed", "INTEGER"),
    ("jobs", "upload_seq", "INTEGER NOT NULL DEFAULT 0"),
)


def _check_ours(conn: sqlite3.Connection, path: str, tables: set[str]) -> None:
    """Raise JournalDamaged unless the database has a taskfleet journal's tables."""
    for table, columns in _JOURNAL_COLUMNS.items():
        have = set()
        if table in tables:
            have = {r[1] for r in conn.execute(f"PRAGMA table_info({table})")}
        if not columns <= have:
            names = ", ".join(sorted(tables)[:5]) + (", …" if len(tables) > 5 else "")
            raise damaged(path, f"an SQLite database with the tables {names}", foreign=True)


class DoneRow(NamedTuple):
    """One accepted chunk as the master writes it."""

    job_id: str
    chunk: int  # the chunk index within its job
    worker: str
    host: str
    blob: bytes


class JournaledJob(NamedTuple):
    """One job as read back at start: what was submitted and how far it got.

    ``upload_seq`` is set for an upload that was not sealed (its items are still
    arriving: the next batch expected); ``problem`` says why the job cannot be
    loaded (it is then to be marked failed, and ``spec`` may be a stand-in).
    """

    spec: JobSpec
    state: JobState
    error: str | None
    duplicates: int
    items_failed: int = 0
    finished: float | None = None
    upload_seq: int | None = None
    problem: str | None = None


def damaged(path: str, reason: str, *, foreign: bool = False) -> JournalDamaged:
    """The one-line refusal of a journal file that is damaged or not a journal at all."""
    what = "is not a taskfleet journal" if foreign else "is damaged"
    return JournalDamaged(
        f"journal {path} {what} ({reason})",
        "move it and its -wal/-shm files aside, then start again;"
        " taskfleet journal check FILE tells what is recoverable",
    )


def is_damage(exc: sqlite3.Error) -> bool:
    """SQLite's "corrupt" and "not a database" (not: locked, unwritable, disk full)."""
    return isinstance(exc, sqlite3.DatabaseError) and not isinstance(exc, sqlite3.OperationalError)


class ErrorRow(NamedTuple):
    """One item failure as the master writes it."""

    job_id: str
    chunk: int
    position: int  # the item's position within the job
    attempt: int
    final: bool
    worker: str
    host: str
    kind: str
    type: str
    message: str
    item: str
    traceback: str


class Journal:
    """Thread-safe journal: one writer connection and one reader connection.

    Raises JournalDamaged for a file that is damaged or not a taskfleet journal
    (nothing is written to it), JournalError when it cannot be opened.
    """

    def __init__(self, path: str) -> None:
        self.path = path
        try:
            self._w = self._connect(path)
            with self._w:
                self._w.executescript(_SCHEMA)
                for table, column, decl in _ADDED_COLUMNS:
                    known = {r[1] for r in self._w.execute(f"PRAGMA table_info({table})")}
                    if column not in known:
                        self._w.execute(f"ALTER TABLE {table} ADD COLUMN {column} {decl}")
            self.incremental = (
                self._w.execute("PRAGMA auto_vacuum").fetchone()[0] == 2  # INCREMENTAL
            )
            self._r = self._connect(path)
        except sqlite3.Error as exc:
            if is_damage(exc):
                # "file is not a database": not SQLite at all (or its header is gone)
                foreign = "not a database" in str(exc)
                raise damaged(path, str(exc), foreign=foreign) from None
            raise JournalError(
                f"cannot open journal {path}: {exc}",
                "give a --journal path in a writable directory"
                " (containers: the /var/lib/taskfleet volume)",
            ) from None
        self._wlock = threading.Lock()
        self._rlock = threading.Lock()

    @staticmethod
    def _connect(path: str) -> sqlite3.Connection:
        directory = os.path.dirname(os.path.abspath(path))
        if not os.path.isdir(directory):
            raise sqlite3.OperationalError(f"directory {directory} does not exist")
        conn = sqlite3.connect(path, check_same_thread=False, timeout=30)
        try:
            tables = {
                name
                for (name,) in conn.execute("SELECT name FROM sqlite_master WHERE type = 'table'")
            }
            if not tables:
                # A new file (this must precede WAL mode and the first table): space freed
                # by pruning can go back to the file system a little at a time.
                conn.execute("PRAGMA auto_vacuum=INCREMENTAL")
            else:
                # Someone else's database: refuse before WAL mode or a table changes it.
                _check_ours(conn, path, tables)
            conn.execute("PRAGMA journal_mode=WAL")
            conn.execute("PRAGMA synchronous=NORMAL")
        except BaseException:
            conn.close()
            raise
        return conn

    def close(self) -> None:
        with self._wlock, self._rlock:
            self._r.close()
            self._w.close()

    # -- writes ------------------------------------------------------------

    def add_job(self, spec: JobSpec, chunks: Sequence[bytes] = ()) -> None:
        """Journal a job that can run: a range job, or an item-list job with all its
        ``chunks`` (pickled item lists, chunk 0 first), in one transaction."""
        with self._wlock, self._w:
            self._insert_job(spec, JobState.RUNNING.value)
            self._insert_chunks(spec.id, 0, chunks)

    def _insert_job(self, spec: JobSpec, state: str) -> None:
        self._w.execute(
            "INSERT INTO jobs (id, job, chunk_size, start, stop, created, step, retries,"
            " on_error, item_timeout, listed, state, code_version)"
            " VALUES (?,?,?,?,?,?,?,?,?,?,?,?,?)",
            (
                spec.id,
                spec.job,
                spec.chunk_size,
                spec.start,
                spec.stop,
                spec.created,
                spec.step,
                spec.retries,
                spec.on_error,
                spec.item_timeout,
                spec.listed,
                state,
                spec.code_version,
            ),
        )

    def _insert_chunks(self, job_id: str, first: int, chunks: Sequence[bytes]) -> None:
        self._w.executemany(
            "INSERT INTO chunk_items (job_id, chunk, items) VALUES (?,?,?)",
            [(job_id, first + k, blob) for k, blob in enumerate(chunks)],
        )

    def open_upload(self, spec: JobSpec) -> None:
        """Journal a job whose items will arrive in batches (``spec.listed`` = 0)."""
        with self._wlock, self._w:
            self._insert_job(spec, OPEN)

    def append_upload(
        self, job_id: str, seq: int, first_chunk: int, chunks: Sequence[bytes], listed: int
    ) -> None:
        """Write batch ``seq`` of an upload: its chunks from ``first_chunk`` on, and the
        items received so far (``listed``), in one transaction.

        Raises JournalError when the upload is not at batch ``seq`` (nothing written).
        """
        with self._wlock, self._w:
            cur = self._w.execute(
                "UPDATE jobs SET upload_seq = ?, listed = ?"
                " WHERE id = ? AND state = ? AND upload_seq = ?",
                (seq + 1, listed, job_id, OPEN, seq),
            )
            if cur.rowcount != 1:
                raise JournalError(
                    f"upload of job {job_id} is not at batch {seq}", "submit the job again"
                )
            self._insert_chunks(job_id, first_chunk, chunks)

    def seal_upload(self, job_id: str) -> None:
        """The upload is complete: the job can run."""
        with self._wlock, self._w:
            self._w.execute(
                "UPDATE jobs SET state = ? WHERE id = ? AND state = ?",
                (JobState.RUNNING.value, job_id, OPEN),
            )

    def record_done(
        self,
        rows: Sequence[DoneRow],
        duplicates: Mapping[str, int] | None = None,
        *,
        failed: Mapping[tuple[str, int], int] | None = None,
        items_failed: Mapping[str, int] | None = None,
        errors: Sequence[ErrorRow] = (),
        finished: Iterable[str] = (),
        states: Mapping[str, tuple[JobState, str | None]] | None = None,
    ) -> None:
        """Commit one ``complete`` call in one transaction: accepted chunks (``failed``:
        their failed items), per-job counters (``items_failed``, ``duplicates``),
        failure records, jobs that became done, and jobs that changed state (failed)."""
        failed = failed or {}
        now = time.time()
        with self._wlock, self._w:
            self._w.executemany(
                "INSERT INTO done (job_id, chunk, worker, host, results, failed)"
                " VALUES (?,?,?,?,?,?)",
                [(*row, failed.get((row[0], row[1]), 0)) for row in rows],
            )
            for job_id, count in (items_failed or {}).items():
                self._w.execute(
                    "UPDATE jobs SET items_failed = items_failed + ? WHERE id = ?", (count, job_id)
                )
            for job_id, count in (duplicates or {}).items():
                self._w.execute(
                    "UPDATE jobs SET duplicates = duplicates + ? WHERE id = ?", (count, job_id)
                )
            if errors:
                self._w.executemany(
                    "INSERT INTO errors (job_id, chunk, position, attempt, final, worker, host,"
                    " kind, type, message, item, traceback, time)"
                    " VALUES (?,?,?,?,?,?,?,?,?,?,?,?,?)",
                    [(*e, now) for e in errors],
                )
            for job_id in finished:
                self._set_state(job_id, JobState.DONE, None, now)
            for job_id, (state, error) in (states or {}).items():
                self._set_state(job_id, state, error, now)

    def set_state(self, job_id: str, state: JobState, error: str | None = None) -> None:
        """Record a job's new state (``finished`` is set for the end states)."""
        with self._wlock, self._w:
            self._set_state(job_id, state, error, time.time())

    def _set_state(self, job_id: str, state: JobState, error: str | None, now: float) -> None:
        self._w.execute(
            "UPDATE jobs SET state = ?, error = ?, finished = ? WHERE id = ?",
            (state.value, error, now if state.finished else None, job_id),
        )

    def delete_job_step(self, job_id: str, batch: int = defaults.PRUNE_BATCH_ROWS) -> bool:
        """Delete up to ``batch`` of a job's result rows, then of its stored items, or
        (when none are left) its failure records and the job itself. True when the job
        is gone."""
        with self._wlock, self._w:
            cur = self._w.execute(
                "DELETE FROM done WHERE seq IN"
                " (SELECT seq FROM done WHERE job_id = ? ORDER BY seq LIMIT ?)",
                (job_id, batch),
            )
            if cur.rowcount:
                return False
            cur = self._w.execute(
                "DELETE FROM chunk_items WHERE rowid IN"
                " (SELECT rowid FROM chunk_items WHERE job_id = ? LIMIT ?)",
                (job_id, batch),
            )
            if cur.rowcount:
                return False
            self._w.execute("DELETE FROM errors WHERE job_id = ?", (job_id,))
            self._w.execute("DELETE FROM jobs WHERE id = ?", (job_id,))
            return True

    def vacuum_step(self, pages: int = defaults.VACUUM_PAGES) -> int:
        """Give up to ``pages`` free pages back to the file system; return how many are left."""
        if not self.incremental:
            return 0
        with self._wlock:
            free = int(self._w.execute("PRAGMA freelist_count").fetchone()[0])
            if free:
                self._w.execute(f"PRAGMA incremental_vacuum({int(pages)})").fetchall()
                free = int(self._w.execute("PRAGMA freelist_count").fetchone()[0])
            return free

    def size(self) -> tuple[int, int]:
        """(pages in the file, free pages): what pruning and vacuuming change."""
        with self._rlock:
            pages = int(self._r.execute("PRAGMA page_count").fetchone()[0])
            free = int(self._r.execute("PRAGMA freelist_count").fetchone()[0])
        return pages, free

    # -- reads -------------------------------------------------------------

    def jobs(self) -> list[JournaledJob]:
        """Every job in submission order, as the master loads them at start.

        An older journal's item lists are moved into ``chunk_items`` on the way. A
        row that cannot become a job has ``problem`` set; reading never raises for
        one job's sake (a damaged file raises sqlite3.DatabaseError).
        """
        with self._rlock:
            rows = self._r.execute(
                "SELECT id, job, chunk_size, start, stop, items IS NOT NULL, created, state,"
                " error, duplicates, step, retries, on_error, item_timeout, items_failed,"
                " finished, listed, upload_seq, code_version FROM jobs ORDER BY created, rowid"
            ).fetchall()
        return [self._load(row) for row in rows]

    def _load(self, row: tuple[Any, ...]) -> JournaledJob:
        (jid, job, cs, start, stop, legacy, created, state, error, dups) = row[:10]
        (step, retries, on_error, item_timeout, items_failed, finished) = row[10:16]
        (listed, seq, code_version) = row[16:]
        try:
            spec = JobSpec(
                id=_text(jid),
                job=_text(job),
                chunk_size=_whole(cs),
                start=_whole(start),
                stop=_whole(stop),
                listed=None if listed is None else _whole(listed),
                created=float(created),
                step=_whole(step),
                retries=_whole(retries),
                on_error=_text(on_error),
                item_timeout=None if item_timeout is None else float(item_timeout),
                code_version=_text(code_version),
            )
            problem = _spec_problem(spec)
            if state == OPEN:
                return JournaledJob(spec, JobState.RUNNING, None, 0, upload_seq=_whole(seq))
            job_state = JobState(state)
            if problem is None and legacy:
                spec, problem = self._move_items(spec)
            return JournaledJob(
                spec,
                job_state,
                None if error is None else str(error),
                _whole(dups),
                _whole(items_failed),
                None if finished is None else float(finished),
                problem=problem,
            )
        except (TypeError, ValueError) as exc:
            stand_in = JobSpec(str(jid), str(job), 1, created=_number(created))
            return JournaledJob(
                stand_in, JobState.FAILED, None, 0, problem=f"its journal row is invalid ({exc})"
            )

    def _move_items(self, spec: JobSpec) -> tuple[JobSpec, str | None]:
        """Move an older master's item list (one value in ``jobs.items``) into one row
        per chunk. Returns the spec with ``listed`` set, or the reason it failed."""
        with self._rlock:
            (blob,) = self._r.execute("SELECT items FROM jobs WHERE id = ?", (spec.id,)).fetchone()
        try:
            items = safepickle.loads(blob, safepickle.PLAIN)
            if not isinstance(items, list):
                raise TypeError(f"a {type(items).__name__}, not a list")
            size = spec.chunk_size
            chunks = [pickle_items(items[lo : lo + size]) for lo in range(0, len(items), size)]
        except Exception as exc:  # a damaged pickle, MemoryError: the job fails, not the master
            return spec, f"its items cannot be read ({type(exc).__name__}: {exc})"
        spec = dataclasses.replace(spec, listed=len(items))
        del items
        with self._wlock, self._w:
            self._insert_chunks(spec.id, 0, chunks)
            self._w.execute(
                "UPDATE jobs SET items = NULL, listed = ? WHERE id = ?", (spec.listed, spec.id)
            )
        return spec, None

    def attempts(self, job_id: str) -> dict[int, tuple[int, set[str]]]:
        """Failed attempts per chunk of a running job, from its failure records."""
        out: dict[int, tuple[int, set[str]]] = {}
        with self._rlock:
            rows = self._r.execute(
                "SELECT chunk, attempt, worker FROM errors WHERE job_id = ?", (job_id,)
            ).fetchall()
        for chunk, attempt, worker in rows:
            count, workers = out.get(chunk, (0, set()))
            workers.add(worker)
            out[chunk] = (max(count, int(attempt)), workers)
        return out

    def error_counts(self) -> dict[str, int]:
        """Failure records per job (the master caps them per job)."""
        with self._rlock:
            rows = self._r.execute("SELECT job_id, count(*) FROM errors GROUP BY job_id").fetchall()
        return {str(j): int(n) for j, n in rows}

    def errors(self, job_id: str, limit: int) -> list[ErrorView]:
        """A job's failure records, oldest first."""
        with self._rlock:
            rows = self._r.execute(
                "SELECT job_id, chunk, position, attempt, final, worker, host, kind, type,"
                " message, item, traceback, time FROM errors WHERE job_id = ? ORDER BY id LIMIT ?",
                (job_id, max(0, limit)),
            ).fetchall()
        return [
            ErrorView(
                job_id=r[0],
                chunk=int(r[1]),
                index=int(r[2]),
                attempt=int(r[3]),
                final=bool(r[4]),
                worker=r[5],
                host=r[6],
                kind=r[7],
                type=r[8],
                message=r[9],
                item=r[10],
                traceback=r[11],
                time=float(r[12]),
            )
            for r in rows
        ]

    def done_chunks(self, job_id: str) -> array[int]:
        """Indices of the job's done chunks, as a compact array (8 bytes per chunk).

        Read completely before returning: the caller adds them to the board
        under the board's lock, and must not do so while this holds ``_rlock``.
        """
        out: array[int] = array("q")
        with self._rlock:
            cur = self._r.execute("SELECT chunk FROM done WHERE job_id = ?", (job_id,))
            while batch := cur.fetchmany(10_000):
                out.extend(chunk for (chunk,) in batch)
        return out

    def chunk_items(self, job_id: str, chunks: Sequence[int]) -> dict[int, bytes]:
        """The stored items (pickled lists) of some chunks of an item-list job."""
        out: dict[int, bytes] = {}
        with self._rlock:
            for chunk in chunks:  # a few per lease call: one primary-key lookup each
                row = self._r.execute(
                    "SELECT items FROM chunk_items WHERE job_id = ? AND chunk = ?",
                    (job_id, chunk),
                ).fetchone()
                if row is not None:
                    out[chunk] = bytes(row[0])
        return out

    # The chunk's stored items beside its results, when asked for (item-list jobs).
    _ROW = (
        "SELECT done.seq, done.chunk, done.worker, done.host, done.results, done.failed, {items}"
        " FROM done LEFT JOIN chunk_items AS ci ON ci.job_id = done.job_id"
        " AND ci.chunk = done.chunk "
    )

    def fetch(
        self, job_id: str, after_seq: int, max_items: int, chunk_size: int, items: bool = False
    ) -> list[ResultRow]:
        """Results committed after ``after_seq``, in commit order, about ``max_items`` items
        (``items``: with the chunks' stored items, counted in the budget)."""
        limit = max(1, max_items // max(1, chunk_size) // (2 if items else 1))
        with self._rlock:
            rows = self._r.execute(
                self._ROW.format(items="ci.items" if items else "NULL")
                + "WHERE done.job_id = ? AND done.seq > ? ORDER BY done.seq LIMIT ?",
                (job_id, after_seq, limit),
            ).fetchall()
        return [_row(r) for r in rows]

    def fetch_ordered(
        self, job_id: str, from_chunk: int, max_items: int, chunk_size: int, items: bool = False
    ) -> list[ResultRow]:
        """Results of chunks ``from_chunk, from_chunk + 1, …`` up to the first one not done,
        about ``max_items`` items (at least one chunk when ``from_chunk`` is done)."""
        limit = max(1, max_items // max(1, chunk_size) // (2 if items else 1))
        with self._rlock:
            rows = self._r.execute(
                self._ROW.format(items="ci.items" if items else "NULL")
                + "WHERE done.job_id = ? AND done.chunk >= ? AND done.chunk < ?"
                " ORDER BY done.chunk",
                (job_id, from_chunk, from_chunk + limit),
            ).fetchall()
        out = []
        for expected, r in enumerate(rows, start=from_chunk):
            if r[1] != expected:
                break
            out.append(_row(r))
        return out


def _row(r: tuple[Any, ...]) -> ResultRow:
    seq, chunk, worker, host, blob, failed, items = r
    return ResultRow(
        int(seq),
        int(chunk),
        str(worker),
        str(host),
        bytes(blob),
        int(failed),
        None if items is None else bytes(items),
    )


def _text(value: Any) -> str:
    if not isinstance(value, str):
        raise TypeError(f"{value!r} is not text")
    return value


def _whole(value: Any) -> int:
    if not isinstance(value, int):
        raise TypeError(f"{value!r} is not a whole number")
    return value


def _number(value: Any) -> float:
    try:
        return float(value)
    except (TypeError, ValueError):
        return 0.0


def _spec_problem(spec: JobSpec) -> str | None:
    """Why a journaled job cannot run (values no submit would have let through)."""
    if spec.chunk_size < 1:
        return f"its chunk size {spec.chunk_size} is below 1"
    if spec.listed is None and spec.step == 0:
        return "its range has a step of 0"
    if spec.listed is not None and spec.listed < 0:
        return f"its item count {spec.listed} is negative"
    if spec.on_error not in {e.value for e in OnError}:
        return f"its on_error {spec.on_error!r} is unknown"
    return None

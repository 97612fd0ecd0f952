"""The journal: SQLite in WAL mode, written before anything is acknowledged.

Tables: ``jobs`` (the submission, items pickled for item-list jobs, options,
state, counters), ``done`` (one row per accepted chunk: who ran it, its
pickled results and how many of its items failed) and ``errors`` (item
failures with their tracebacks, at most ``defaults.MAX_JOB_ERRORS`` per job).
``done.seq`` orders results by completion: a client resumes a result stream
from the last ``seq`` it saw, across master restarts; ``UNIQUE(job_id, chunk)``
serves the ordered stream (by chunk index).

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

import os
import pickle
import sqlite3
import threading
import time
from array import array
from collections.abc import Iterable, Mapping, Sequence
from typing import Any, NamedTuple

from taskfleet import defaults
from taskfleet.board import JobSpec
from taskfleet.errors import JournalError
from taskfleet.protocol import ErrorView, JobState, ResultRow

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
"""

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
)


class DoneRow(NamedTuple):
    """One accepted chunk as the master writes it."""

    job_id: str
    chunk: int  # the chunk index within its job
    worker: str
    host: str
    blob: bytes


class JournaledJob(NamedTuple):
    """One job as read back at start: what was submitted and how far it got."""

    spec: JobSpec
    state: JobState
    error: str | None
    duplicates: int
    items_failed: int = 0
    finished: float | None = None


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
    """Thread-safe journal: one writer connection and one reader connection."""

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
        if not conn.execute("SELECT count(*) FROM sqlite_master").fetchone()[0]:
            # A new file (this must precede WAL mode and the first table): space freed
            # by pruning can go back to the file system a little at a time.
            conn.execute("PRAGMA auto_vacuum=INCREMENTAL")
        conn.execute("PRAGMA journal_mode=WAL")
        conn.execute("PRAGMA synchronous=NORMAL")
        return conn

    def close(self) -> None:
        with self._wlock, self._rlock:
            self._r.close()
            self._w.close()

    # -- writes ------------------------------------------------------------

    def add_job(self, spec: JobSpec) -> None:
        items = (
            None
            if spec.items is None
            else pickle.dumps(list(spec.items), protocol=pickle.HIGHEST_PROTOCOL)
        )
        with self._wlock, self._w:
            self._w.execute(
                "INSERT INTO jobs (id, job, chunk_size, start, stop, items, created,"
                " step, retries, on_error, item_timeout, code_version)"
                " VALUES (?,?,?,?,?,?,?,?,?,?,?,?)",
                (
                    spec.id,
                    spec.job,
                    spec.chunk_size,
                    spec.start,
                    spec.stop,
                    items,
                    spec.created,
                    spec.step,
                    spec.retries,
                    spec.on_error,
                    spec.item_timeout,
                    spec.code_version,
                ),
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
        """Delete up to ``batch`` of a job's result rows, or (when none are left) its
        failure records and the job itself. True when the job is gone."""
        with self._wlock, self._w:
            cur = self._w.execute(
                "DELETE FROM done WHERE seq IN"
                " (SELECT seq FROM done WHERE job_id = ? ORDER BY seq LIMIT ?)",
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
        """Every job in submission order."""
        with self._rlock:
            rows = self._r.execute(
                "SELECT id, job, chunk_size, start, stop, items, created, state, error, duplicates,"
                " step, retries, on_error, item_timeout, items_failed, finished, code_version"
                " FROM jobs ORDER BY created, rowid"
            ).fetchall()
        out = []
        for (
            jid,
            job,
            cs,
            start,
            stop,
            items,
            created,
            state,
            error,
            dups,
            step,
            retries,
            on_error,
            item_timeout,
            items_failed,
            finished,
            code_version,
        ) in rows:
            spec = JobSpec(
                id=jid,
                job=job,
                chunk_size=cs,
                start=start,
                stop=stop,
                items=None if items is None else pickle.loads(items),
                created=created,
                step=step,
                retries=retries,
                on_error=on_error,
                item_timeout=item_timeout,
                code_version=code_version,
            )
            out.append(JournaledJob(spec, JobState(state), error, dups, items_failed, finished))
        return out

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

    def fetch(
        self, job_id: str, after_seq: int, max_items: int, chunk_size: int
    ) -> list[ResultRow]:
        """Results committed after ``after_seq``, in commit order, about ``max_items`` items."""
        limit = max(1, max_items // max(1, chunk_size))
        with self._rlock:
            rows = self._r.execute(
                "SELECT seq, chunk, worker, host, results, failed FROM done "
                "WHERE job_id = ? AND seq > ? ORDER BY seq LIMIT ?",
                (job_id, after_seq, limit),
            ).fetchall()
        return [_row(r) for r in rows]

    def fetch_ordered(
        self, job_id: str, from_chunk: int, max_items: int, chunk_size: int
    ) -> list[ResultRow]:
        """Results of chunks ``from_chunk, from_chunk + 1, …`` up to the first one not done,
        about ``max_items`` items (at least one chunk when ``from_chunk`` is done)."""
        limit = max(1, max_items // max(1, chunk_size))
        with self._rlock:
            rows = self._r.execute(
                "SELECT seq, chunk, worker, host, results, failed FROM done "
                "WHERE job_id = ? AND chunk >= ? AND chunk < ? ORDER BY chunk",
                (job_id, from_chunk, from_chunk + limit),
            ).fetchall()
        out = []
        for expected, r in enumerate(rows, start=from_chunk):
            if r[1] != expected:
                break
            out.append(_row(r))
        return out


def _row(r: tuple[Any, ...]) -> ResultRow:
    seq, chunk, worker, host, blob, failed = r
    return ResultRow(int(seq), int(chunk), str(worker), str(host), bytes(blob), int(failed))

"""The journal: SQLite in WAL mode, written before anything is acknowledged.

Tables: ``jobs`` (the submission, items pickled for item-list jobs, state)
and ``done`` (one row per accepted chunk: who ran it and its pickled results).
``done.seq`` orders results for clients: a client resumes a result stream from
the last ``seq`` it saw, across master restarts.

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
from array import array
from collections.abc import Sequence
from typing import NamedTuple

from taskfleet.board import JobSpec
from taskfleet.errors import JournalError
from taskfleet.protocol import JobState, ResultRow

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
"""


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


class Journal:
    """Thread-safe journal: one writer connection and one reader connection."""

    def __init__(self, path: str) -> None:
        self.path = path
        try:
            self._w = self._connect(path)
            with self._w:
                self._w.executescript(_SCHEMA)
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
                "INSERT INTO jobs (id, job, chunk_size, start, stop, items, created)"
                " VALUES (?,?,?,?,?,?,?)",
                (spec.id, spec.job, spec.chunk_size, spec.start, spec.stop, items, spec.created),
            )

    def record_done(
        self, rows: Sequence[DoneRow], duplicates: dict[str, int] | None = None
    ) -> None:
        """Commit accepted chunks (and duplicate counters) in one transaction."""
        with self._wlock, self._w:
            self._w.executemany(
                "INSERT INTO done (job_id, chunk, worker, host, results) VALUES (?,?,?,?,?)", rows
            )
            for job_id, count in (duplicates or {}).items():
                self._w.execute(
                    "UPDATE jobs SET duplicates = duplicates + ? WHERE id = ?", (count, job_id)
                )

    def set_state(self, job_id: str, state: JobState, error: str | None = None) -> None:
        with self._wlock, self._w:
            self._w.execute(
                "UPDATE jobs SET state = ?, error = ? WHERE id = ?", (state.value, error, job_id)
            )

    # -- reads -------------------------------------------------------------

    def jobs(self) -> list[JournaledJob]:
        """Every job in submission order."""
        with self._rlock:
            rows = self._r.execute(
                "SELECT id, job, chunk_size, start, stop, items, created, state, error, duplicates "
                "FROM jobs ORDER BY created, rowid"
            ).fetchall()
        out = []
        for jid, job, cs, start, stop, items, created, state, error, dups in rows:
            spec = JobSpec(
                id=jid,
                job=job,
                chunk_size=cs,
                start=start,
                stop=stop,
                items=None if items is None else pickle.loads(items),
                created=created,
            )
            out.append(JournaledJob(spec, JobState(state), error, dups))
        return out

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
                "SELECT seq, chunk, worker, host, results FROM done "
                "WHERE job_id = ? AND seq > ? ORDER BY seq LIMIT ?",
                (job_id, after_seq, limit),
            ).fetchall()
        return [ResultRow(int(s), int(c), str(w), str(h), bytes(r)) for s, c, w, h, r in rows]

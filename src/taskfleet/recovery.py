"""What can be recovered from a journal file: ``taskfleet journal check|export PATH``.

A master refuses a journal that is damaged or not a taskfleet journal, in one
line that names the file. These two commands look inside such a file (or any
journal, a live one included) without ever changing it:

* :func:`inspect` (``journal check``) says what the file is — a taskfleet
  journal, another SQLite database, not a database at all — whether SQLite
  finds it intact, who holds its lock, and how many jobs, stored item chunks,
  results and failure records can be read, per job;
* :func:`export` (``journal export``) writes everything readable as JSON lines
  (the format is in docs/interfaces.md): one ``job`` record per job, then its
  ``items`` (item-list jobs, per chunk), ``result`` (per chunk) and ``error``
  records, then a ``summary``.

How rows are read: by rowid, a thousand at a time; a batch that fails is read
row by row, so one damaged page costs only the rows on it — unless it is an
interior page of a table's b-tree, which takes every row below it along
(there is no page-level carving here). A file shorter than its header says
(a truncated copy) is read through a temporary copy whose header is made to
match the file, so the pages that are there can be read.
"""

from __future__ import annotations

import base64
import dataclasses
import json
import os
import shutil
import sqlite3
import struct
import tempfile
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TextIO

from taskfleet import lock, safepickle
from taskfleet.errors import ItemError, UsageError
from taskfleet.jobs import decode_results

FORMAT = 1
"""Version of the export's JSON lines (the ``journal`` record's ``format``)."""

_MAGIC = b"SQLite format 3\x00"
_BATCH = 1000
_EMPTY_BATCHES = 50  # batches read in a row with nothing in them: the table's end (no max)

# Per table: the columns to read (those every journal version has come first).
_COLUMNS = {
    "jobs": (
        "id, job, chunk_size, start, stop, created, state",
        "error, step, retries, on_error, item_timeout, items_failed, finished, listed, items",
    ),
    "chunk_items": ("job_id, chunk, items", ""),
    "done": ("seq, job_id, chunk, worker, host, results", "failed"),
    "errors": (
        "job_id, chunk, position, attempt, final, worker, host, kind, type, message, item,"
        " traceback, time",
        "",
    ),
}


@dataclass
class Rows:
    """Rows of one table: how many could be read, and how many rowids could not."""

    readable: int = 0
    unreadable: int = 0


@dataclass
class JobSummary:
    id: str
    job: str
    state: str
    items: int | None  # None: unknown (a damaged row)
    chunks: int | None
    results: int = 0  # chunks whose results can be read
    stored_chunks: int = 0  # chunks whose stored items can be read (item-list jobs)


@dataclass
class Report:
    """What :func:`inspect` found (``journal check --json`` prints it)."""

    path: str
    bytes: int
    kind: str  # "journal", "foreign" (another SQLite database), "unreadable" (an SQLite
    # file SQLite cannot open), "not-sqlite", "empty"
    intact: bool
    wal_bytes: int = 0  # its -wal file (changes not yet in the main file)
    problems: list[str] = field(default_factory=list)  # integrity check, read errors, notes
    held_by: str | None = None  # the master holding its lock now, if any
    tables: dict[str, Rows] = field(default_factory=dict)
    jobs: list[JobSummary] = field(default_factory=list)

    @property
    def recoverable(self) -> bool:
        """Something can be recovered: jobs or results."""
        return any(t.readable for t in self.tables.values())

    def as_json(self) -> dict[str, Any]:
        return dataclasses.asdict(self)


# -- opening ------------------------------------------------------------------------------


class _Opened:
    """A read-only connection to the file (or a fixed-up temporary copy of it)."""

    def __init__(self, path: str, report: Report) -> None:
        self._tmp: str | None = None
        source = path
        if _truncated(path):
            self._tmp = tempfile.mkdtemp(prefix="taskfleet-recover-")
            source = os.path.join(self._tmp, "journal.db")
            _fixed_copy(path, source)
            report.problems.append(
                "the file is shorter than its header says (truncated): reading the pages"
                " that are there"
            )
        uri = Path(source).resolve().as_uri()
        try:
            try:
                self.conn = sqlite3.connect(f"{uri}?mode=ro", uri=True)
                self.conn.execute("SELECT count(*) FROM sqlite_master").fetchone()
            except sqlite3.OperationalError:
                # Read-only access to a WAL journal can fail without its -shm file; immutable
                # mode reads the main file alone.
                self.conn = sqlite3.connect(f"{uri}?immutable=1", uri=True)
                self.conn.execute("SELECT count(*) FROM sqlite_master").fetchone()
                report.problems.append(
                    "opened without its -wal file (immutable): its latest changes are not seen"
                )
        except BaseException:
            self.close()
            raise

    def close(self) -> None:
        if hasattr(self, "conn"):
            self.conn.close()
        if self._tmp is not None:
            shutil.rmtree(self._tmp, ignore_errors=True)


def _plain(blob: bytes) -> Any:
    """An item list from the journal, decoded as plain data only: a damaged or crafted
    journal file must never run code in the process that checks it."""
    return safepickle.loads(blob, safepickle.PLAIN)


def _page_size(header: bytes) -> int:
    size = struct.unpack(">H", header[16:18])[0]
    return 65536 if size == 1 else size


def _truncated(path: str) -> bool:
    """The header counts more pages than the file has (when that count is valid)."""
    with open(path, "rb") as fh:
        header = fh.read(100)
    if len(header) < 100 or not header.startswith(_MAGIC):
        return False
    pages = struct.unpack(">I", header[28:32])[0]
    valid = header[24:28] == header[92:96]  # SQLite trusts the count only then
    return valid and pages * _page_size(header) > os.path.getsize(path)


def _fixed_copy(path: str, dest: str) -> None:
    """Copy the whole pages of ``path`` (and its -wal) to ``dest``, the header's page
    count set to what is there."""
    with open(path, "rb") as fh:
        data = bytearray(fh.read())
    size = _page_size(bytes(data[:100]))
    pages = len(data) // size
    del data[pages * size :]
    data[28:32] = struct.pack(">I", pages)
    with open(dest, "wb") as fh:
        fh.write(data)
    if os.path.exists(path + "-wal"):
        shutil.copyfile(path + "-wal", dest + "-wal")


# -- reading ------------------------------------------------------------------------------


def _columns(conn: sqlite3.Connection, table: str) -> str:
    """The columns of ``table`` to read: the base ones, and the later ones it has."""
    base, later = _COLUMNS[table]
    have = {r[1] for r in conn.execute(f"PRAGMA table_info({table})")}
    extra = [c.strip() for c in later.split(",") if c.strip() and c.strip() in have]
    return ", ".join([base, *extra])


def _top(conn: sqlite3.Connection, table: str) -> int | None:
    """The largest rowid of ``table`` when SQLite can tell (AUTOINCREMENT keeps it too)."""
    try:
        top = conn.execute(f"SELECT max(rowid) FROM {table}").fetchone()[0]  # noqa: S608 - a name of ours
        return int(top or 0)
    except sqlite3.DatabaseError:
        pass
    try:
        row = conn.execute("SELECT seq FROM sqlite_sequence WHERE name = ?", (table,)).fetchone()
        return None if row is None else int(row[0])
    except sqlite3.DatabaseError:
        return None


def _scan(conn: sqlite3.Connection, table: str, count: Rows) -> Iterator[dict[str, Any]]:
    """Every readable row of ``table`` as a dict, by rowid; counts what cannot be read."""
    columns = _columns(conn, table)
    names = [c.strip() for c in columns.split(",")]
    batch_sql = f"SELECT {columns} FROM {table} WHERE rowid > ? AND rowid <= ? ORDER BY rowid"  # noqa: S608 - names of ours
    row_sql = f"SELECT {columns} FROM {table} WHERE rowid = ?"  # noqa: S608 - names of ours
    top = _top(conn, table)
    lo, empty = 0, 0
    while (lo < top) if top is not None else (empty < _EMPTY_BATCHES):
        hi = lo + _BATCH
        try:
            rows = conn.execute(batch_sql, (lo, hi)).fetchall()
        except sqlite3.DatabaseError:
            rows = []
            for rowid in range(lo + 1, (hi if top is None else min(hi, top)) + 1):
                try:
                    row = conn.execute(row_sql, (rowid,)).fetchone()
                except sqlite3.DatabaseError:
                    count.unreadable += 1
                    continue
                if row is not None:
                    rows.append(row)
        empty = 0 if rows else empty + 1
        for row in rows:
            count.readable += 1
            yield dict(zip(names, row, strict=True))
        lo = hi


def _kind(path: str) -> str:
    with open(path, "rb") as fh:
        head = fh.read(len(_MAGIC))
    if not head:
        return "empty"
    return "sqlite" if head == _MAGIC else "not-sqlite"


def _open(path: str) -> tuple[Report, _Opened | None]:
    """The report's first facts, and a connection when the file is an SQLite database."""
    try:
        size = os.path.getsize(path)
    except OSError as exc:
        raise UsageError(
            f"cannot read {path}: {exc.strerror}", "give the path of a journal file"
        ) from None
    report = Report(path=path, bytes=size, kind="empty", intact=False)
    if os.path.exists(path + "-wal"):
        report.wal_bytes = os.path.getsize(path + "-wal")
    info = lock.holder(path)
    report.held_by = lock.describe(info) if info is not None else None
    kind = _kind(path)
    if kind != "sqlite":
        report.kind = kind
        report.problems.append(
            "the file is empty" if kind == "empty" else "the file is not an SQLite database"
        )
        return report, None
    try:
        opened = _Opened(path, report)
    except sqlite3.DatabaseError as exc:
        report.kind = "unreadable"
        report.problems.append(f"SQLite cannot read it ({exc})")
        return report, None
    conn = opened.conn
    try:
        tables = {r[0] for r in conn.execute("SELECT name FROM sqlite_master WHERE type = 'table'")}
    except sqlite3.DatabaseError as exc:
        report.kind = "journal"
        report.problems.append(f"its table list cannot be read ({exc})")
        return report, opened
    ours = {"jobs", "done"} <= tables
    report.kind = "journal" if ours else "foreign"
    if not ours:
        report.problems.append(
            "an SQLite database without a journal's jobs and done tables (tables: "
            + (", ".join(sorted(tables)[:8]) or "none")
            + ")"
        )
    try:
        verdict = [r[0] for r in conn.execute("PRAGMA integrity_check(10)")]
    except sqlite3.DatabaseError as exc:
        verdict = [str(exc)]
    report.intact = ours and verdict == ["ok"] and not report.problems
    if verdict != ["ok"]:
        lines = [line for v in verdict for line in str(v).splitlines() if line.strip()]
        report.problems.extend(f"integrity: {line}" for line in lines[:10])
    return report, opened


def _jobs_of(report: Report, row: dict[str, Any]) -> JobSummary:
    listed = row.get("listed")
    items: int | None
    try:
        if listed is not None:
            items = int(listed)
        elif row.get("items") is not None:
            items = len(_plain(row["items"]))  # an older journal's item list
        else:
            step = int(row.get("step") or 1)
            items = len(range(int(row["start"]), int(row["stop"]), step))
        chunks: int | None = -(-items // max(1, int(row["chunk_size"])))
    except Exception:  # any damage in the row: counts stay unknown
        items = chunks = None
    summary = JobSummary(str(row["id"]), str(row["job"]), str(row["state"]), items, chunks, 0, 0)
    report.jobs.append(summary)
    return summary


def inspect(path: str) -> Report:
    """What the file is and what can be read from it (it is opened read-only).

    Raises UsageError when the file cannot be read at all.
    """
    report, opened = _open(path)
    if opened is None:
        return report
    try:
        if report.kind == "journal":
            _count(opened.conn, report)
    finally:
        opened.close()
    return report


def _count(conn: sqlite3.Connection, report: Report) -> None:
    by_id: dict[str, JobSummary] = {}
    for table in ("jobs", "chunk_items", "done", "errors"):
        if not _has(conn, table):
            continue
        count = report.tables.setdefault(table, Rows())
        for row in _scan(conn, table, count):
            if table == "jobs":
                summary = _jobs_of(report, row)
                by_id[summary.id] = summary
            elif table == "chunk_items" and row["job_id"] in by_id:
                by_id[row["job_id"]].stored_chunks += 1
            elif table == "done" and row["job_id"] in by_id:
                by_id[row["job_id"]].results += 1


def _has(conn: sqlite3.Connection, table: str) -> bool:
    try:
        return bool(
            conn.execute(
                "SELECT 1 FROM sqlite_master WHERE type = 'table' AND name = ?", (table,)
            ).fetchone()
        )
    except sqlite3.DatabaseError:
        return False


# -- export ---------------------------------------------------------------------------------


def _json_value(value: Any) -> Any:
    if isinstance(value, ItemError):
        return {"item_error": dataclasses.asdict(value)}
    if isinstance(value, tuple | set | frozenset):
        return list(value)
    raise TypeError(f"{type(value).__name__} is not JSON")


def _values(key: str, blob: bytes, decode: Any) -> dict[str, Any]:
    """``{key: [...]}`` as JSON, or ``{key + "_pickle": base64}`` when the values cannot be
    unpickled here or are not JSON (with ``decode_error`` saying why)."""
    try:
        values = decode(blob)
        json.dumps(values, default=_json_value, allow_nan=False)
        return {key: values}
    except Exception as exc:  # any reason the values cannot become JSON here
        return {
            f"{key}_pickle": base64.b64encode(blob).decode("ascii"),
            "decode_error": f"{type(exc).__name__}: {exc}"[:300],
        }


def _write(out: TextIO, record: dict[str, Any]) -> None:
    out.write(json.dumps(record, default=_json_value, allow_nan=False) + "\n")


def _job_record(row: dict[str, Any]) -> dict[str, Any]:
    listed = row.get("listed")
    is_range = listed is None and row.get("items") is None
    record: dict[str, Any] = {
        "record": "job",
        "id": row["id"],
        "job": row["job"],
        "state": row["state"],
        "error": row.get("error"),
        "created": row.get("created"),
        "finished": row.get("finished"),
        "chunk_size": row.get("chunk_size"),
        "range": [row["start"], row["stop"], row.get("step", 1)] if is_range else None,
        "items": listed,
        "options": {
            "retries": row.get("retries"),
            "on_error": row.get("on_error"),
            "item_timeout": row.get("item_timeout"),
        },
        "items_failed": row.get("items_failed"),
    }
    return record


def export(path: str, out: TextIO) -> Report:
    """Write everything readable in the journal at ``path`` to ``out`` as JSON lines
    (docs/interfaces.md) and return the report of what was read.

    Raises UsageError when the file cannot be read or holds no journal.
    """
    report, opened = _open(path)
    if opened is None or report.kind != "journal":
        if opened is not None:
            opened.close()
        raise UsageError(
            f"{path} holds no taskfleet journal ({'; '.join(report.problems)})",
            "nothing to export; taskfleet journal check tells what the file is",
        )
    conn = opened.conn
    try:
        _write(out, {"record": "journal", "format": FORMAT, "path": path})
        by_id: dict[str, JobSummary] = {}
        jobs_rows = report.tables.setdefault("jobs", Rows())
        for row in _scan(conn, "jobs", jobs_rows):
            summary = _jobs_of(report, row)
            by_id[summary.id] = summary
            record = _job_record(row)
            if row.get("items") is not None:  # an older journal: the list in one value
                record.update(_values("item_list", row["items"], _plain))
            _write(out, record)
        if _has(conn, "chunk_items"):
            count = report.tables.setdefault("chunk_items", Rows())
            for row in _scan(conn, "chunk_items", count):
                if row["job_id"] in by_id:
                    by_id[row["job_id"]].stored_chunks += 1
                base = {"record": "items", "job_id": row["job_id"], "chunk": row["chunk"]}
                _write(out, {**base, **_values("items", row["items"], _plain)})
        count = report.tables.setdefault("done", Rows())
        for row in _scan(conn, "done", count):
            if row["job_id"] in by_id:
                by_id[row["job_id"]].results += 1
            base = {
                "record": "result",
                "job_id": row["job_id"],
                "chunk": row["chunk"],
                "seq": row["seq"],
                "worker": row["worker"],
                "host": row["host"],
                "failed": row.get("failed", 0),
            }
            _write(out, {**base, **_values("results", row["results"], decode_results)})
        if _has(conn, "errors"):
            count = report.tables.setdefault("errors", Rows())
            for row in _scan(conn, "errors", count):
                _write(out, {"record": "error", **row, "final": bool(row["final"])})
        _write(
            out,
            {
                "record": "summary",
                "intact": report.intact,
                "problems": report.problems,
                "tables": {k: dataclasses.asdict(v) for k, v in report.tables.items()},
            },
        )
    finally:
        opened.close()
    return report

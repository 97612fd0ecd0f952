"""The master: board + journal served over the manager protocol, in-process.

:class:`BoardService` is the object registered as ``get_board``; its public
methods are the whole remote API, listed and described in
:mod:`taskfleet.protocol`. Everything a caller is told has happened is in the
journal first.

Nothing a caller sends can stop the master: a job is checked completely
(name, options, size against what the master holds per job, every item)
before it is journaled; an unexpected failure inside a call is logged with
its traceback and answered with its reason (never a bare "see the log"); and
a journal entry that cannot be loaded at start becomes a failed job with the
reason while the master starts and serves the rest.
"""

from __future__ import annotations

import errno
import functools
import logging
import os
import re
import shutil
import signal
import socket
import sqlite3
import tempfile
import threading
import time
from collections import Counter
from collections.abc import Callable, Sequence
from dataclasses import dataclass, replace
from typing import Any, TypeVar

from taskfleet import __version__, defaults, jobs, metrics, observe
from taskfleet.address import format_hostport
from taskfleet.board import STORED, Board, CompleteOutcome, JobSpec, check_size, range_length
from taskfleet.errors import (
    BadJobArguments,
    BindError,
    JobNotFound,
    JournalError,
    ProtocolMismatch,
    RemoteError,
    TaskfleetError,
)
from taskfleet.journal import DoneRow, ErrorRow, Journal, JournaledJob, damaged, is_damage
from taskfleet.lock import JournalLock
from taskfleet.manager import TaskfleetServer
from taskfleet.observe import Counters, Observer
from taskfleet.protocol import (
    EXPOSED,
    PROTOCOL_VERSION,
    Ack,
    ChunkId,
    ErrorView,
    HelloReply,
    ItemFailure,
    JobList,
    JobOptions,
    JobState,
    JobView,
    Lease,
    LostWorkerView,
    OnError,
    PingReply,
    Result,
    Role,
    SpecWire,
    StatusView,
    SubmitReply,
    TLSView,
    UploadReply,
    wire,
)
from taskfleet.tls import CertInfo, TLSConfig, describe
from taskfleet.web import WebApp, WebServer, load_static

_JOB_ID = re.compile(r"^[A-Za-z0-9_-]{1,64}$")


def _finished(view: JobView) -> bool:
    return JobState(view["state"]).finished


def check_options(options: Any) -> JobOptions:
    """A submit's options, checked; raise BadJobArguments naming the bad value."""
    opts = dict(options or {})
    retries = opts.get("retries", defaults.RETRIES)
    on_error = opts.get("on_error", defaults.ON_ERROR)
    item_timeout = opts.get("item_timeout")
    if isinstance(retries, bool) or not isinstance(retries, int):
        raise BadJobArguments(
            f"bad retries {retries!r}", f"use a whole number 0..{defaults.MAX_RETRIES}"
        )
    if not 0 <= retries <= defaults.MAX_RETRIES:
        raise BadJobArguments(
            f"retries {retries} is out of range", f"use 0..{defaults.MAX_RETRIES}"
        )
    if on_error not in {e.value for e in OnError}:
        raise BadJobArguments(f"bad on_error {on_error!r}", "use fail or skip")
    if item_timeout is not None:
        if isinstance(item_timeout, bool) or not isinstance(item_timeout, int | float):
            raise BadJobArguments(
                f"bad item timeout {item_timeout!r}", "give seconds, e.g. 30 (or none)"
            )
        if not 0 < item_timeout < float("inf"):
            raise BadJobArguments(
                f"item timeout {item_timeout!r} must be above 0", "give seconds, e.g. 30"
            )
        item_timeout = float(item_timeout)
    return JobOptions(retries=retries, on_error=str(on_error), item_timeout=item_timeout)


def _check_job_id(job_id: Any) -> None:
    if not isinstance(job_id, str) or not _JOB_ID.match(job_id):
        raise BadJobArguments(
            f"bad job id {_one_line(repr(job_id), 80)}", "use letters, digits, - and _"
        )


def _packages(value: Any) -> dict[str, str]:
    """A worker's job packages as it said them at hello, kept to plain short strings
    (they go into every ``status``); anything else is dropped."""
    if not isinstance(value, dict):
        return {}
    return {
        k[:100]: v[:100]
        for k, v in list(value.items())[: defaults.MAX_WORKER_JOB_PACKAGES]
        if isinstance(k, str) and isinstance(v, str)
    }


def _one_line(text: str, limit: int = 300) -> str:
    text = " ".join(text.split())
    return text if len(text) <= limit else text[: limit - 1] + "…"


def check_chunk_size(chunk_size: Any) -> int:
    """A submit's chunk size, checked; raise BadJobArguments naming the valid range."""
    if (
        isinstance(chunk_size, bool)
        or not isinstance(chunk_size, int)
        or not 1 <= chunk_size <= defaults.MAX_CHUNK_SIZE
    ):
        raise BadJobArguments(
            f"bad chunk size {chunk_size!r}",
            f"use 1..{defaults.MAX_CHUNK_SIZE} (default {defaults.CHUNK_SIZE})",
        )
    return chunk_size


def check_range(start: Any, stop: Any, step: Any, chunk_size: int) -> None:
    """A range job's bounds, checked: whole numbers the journal can store, not empty,
    not more chunks than the master holds per job. Raise BadJobArguments."""
    if not all(isinstance(v, int) and not isinstance(v, bool) for v in (start, stop, step)):
        raise BadJobArguments(
            f"bad range ({_one_line(repr(start), 40)}, {_one_line(repr(stop), 40)},"
            f" {_one_line(repr(step), 40)})",
            "give whole numbers",
        )
    limit = defaults.MAX_RANGE_BOUND
    for name, value in (("start", start), ("stop", stop), ("step", step)):
        if not -limit <= value <= limit:
            raise BadJobArguments(
                f"the range's {name} {jobs.safe_repr(value, 40)} does not fit the journal",
                f"keep range bounds within ±{limit:,} (64-bit integers)",
            )
    if step == 0 or not range_length(start, stop, step):
        raise BadJobArguments(
            f"range({start}, {stop}, {step}) is empty", "give --range N with N >= 1"
        )
    check_size(range_length(start, stop, step), chunk_size)


def _pickled_chunks(items: Sequence[Any], chunk_size: int, first: int) -> list[bytes]:
    """Items as stored: one pickled list per chunk, each within ``MAX_CHUNK_BYTES``."""
    out = []
    for lo in range(0, len(items), chunk_size):
        blob = jobs.pickle_items(items[lo : lo + chunk_size])
        if len(blob) > defaults.MAX_CHUNK_BYTES:
            mb = defaults.MAX_CHUNK_BYTES // (1024 * 1024)
            raise BadJobArguments(
                f"chunk {first + lo // chunk_size}'s items take {len(blob) / 2**20:,.0f} MB"
                f" pickled; a chunk may take at most {mb} MB",
                "use a smaller --chunk-size (or smaller items)",
            )
        out.append(blob)
    return out


_F = TypeVar("_F", bound=Callable[..., Any])


def _reported(name: str, method: _F) -> _F:
    """Wrap a remote method: an unexpected exception is logged with its traceback and
    answered as a RemoteError carrying its type and message (the client's line then
    says what happened, and the master's log, which the fix points to, has the rest)."""

    @functools.wraps(method)
    def call(self: BoardService, *args: Any, **kwargs: Any) -> Any:
        try:
            return method(self, *args, **kwargs)
        except TaskfleetError:
            raise
        except Exception as exc:
            self.log.exception("%s from %s failed", name, self._peer() or "?")
            raise RemoteError(
                f"the master failed on {name}: {type(exc).__name__}: {_one_line(str(exc), 200)}",
                "a bug or a damaged journal; the master's log has the traceback",
            ) from None

    return call  # type: ignore[return-value]


@dataclass
class _Upload:
    """A job whose items are arriving (``open`` … ``seal``); it is not on the board yet."""

    spec: JobSpec  # listed: the items received so far
    seq: int  # the next batch expected
    seen: float  # monotonic time of the last batch


def failure_summary(
    failure: ItemFailure | None, index: int, attempt: int, worker: str, host: str
) -> str:
    """One line naming what failed, on which item, where, after how many attempts."""
    if failure is None:
        return f"chunk failed on worker {worker} ({host}) at attempt {attempt}"
    what = f"{failure.type}: {failure.message}" if failure.type else failure.message
    return _one_line(
        f"{what} (item {index}: {failure.item}; worker {worker} on {host}, attempt {attempt})"
    )


class BoardService:
    """The remote API. Thread-safe; one instance per master."""

    def __init__(
        self,
        board: Board,
        journal: Journal,
        log: logging.Logger,
        address: str,
        upload_timeout: float = defaults.UPLOAD_IDLE_TIMEOUT,
    ) -> None:
        self.board = board
        self.journal = journal
        self.log = log
        self.address = address
        self.upload_timeout = upload_timeout
        #: jobs whose items are still arriving (open … seal), under ``_submit``
        self._uploads: dict[str, _Upload] = {}
        self.started = time.monotonic()
        self.server: TaskfleetServer | None = None
        self._commit = threading.Lock()
        self._submit = threading.Lock()
        self._results = threading.Condition()
        self._generation = 0
        self._job_started: dict[str, float] = {}
        # The master's certificate and the CA's (status reports their expiry).
        self.certs: tuple[CertInfo, CertInfo] | None = None
        self.counters = Counters()
        self.http_address: str | None = None  # set when the HTTP server runs
        # Workers that went silent without a goodbye: name -> (host, monotonic time
        # reaped); the verdict reports them (see _lost_view). The host of every worker
        # that joined, because the board forgets a silent worker's.
        self._lost: dict[str, tuple[str, float]] = {}
        self._hosts: dict[str, str] = {}
        self._lost_lock = threading.Lock()
        #: failure records journaled per job (capped at defaults.MAX_JOB_ERRORS)
        self._error_counts: dict[str, int] = {}
        #: jobs pruned from the board whose journal rows are still being deleted
        self._pruning: list[str] = []

    def set_error_counts(self, counts: dict[str, int]) -> None:
        """Failure records already journaled per job (at start)."""
        self._error_counts = dict(counts)

    def _peer(self) -> str:
        return self.server.peer() if self.server is not None else ""

    def _joined(
        self, worker: str, host: str, processes: int = 0, packages: dict[str, str] | None = None
    ) -> None:
        if self.board.note_seen(worker, host, processes, packages):
            with self._lost_lock:
                self._hosts[worker] = host or worker
                self._lost.pop(worker, None)
            extra = f", {processes} processes" if processes else ""
            if packages:
                extra += ", jobs " + ", ".join(f"{n} {v}" for n, v in packages.items())
            self.log.info(
                "worker %s joined (host %s%s, from %s)", worker, host, extra, self._peer() or "?"
            )

    # -- workers -------------------------------------------------------------

    def ping(self) -> PingReply:
        return PingReply(
            ok=True, version=__version__, protocol=PROTOCOL_VERSION, address=self.address
        )

    def hello(
        self,
        protocol: int,
        role: str,
        name: str,
        host: str,
        processes: int,
        job_packages: dict[str, str] | None = None,
        *later: Any,
    ) -> HelloReply:
        """First call on every connection: refuse another protocol; a worker joins the board
        with the job packages it has (distribution → version).

        Arguments a later protocol version adds (``later``) are taken and ignored, so a
        newer peer gets the version check's one line, not an argument error.
        """
        if protocol != PROTOCOL_VERSION:
            self.log.warning(
                "refused %s %s from %s: it speaks protocol %s, this master %d",
                role,
                name,
                self._peer() or "?",
                protocol,
                PROTOCOL_VERSION,
            )
            raise ProtocolMismatch(
                f"the master at {self.address} speaks taskfleet protocol {PROTOCOL_VERSION}"
                f" (taskfleet {__version__}), this {role} speaks {protocol}",
                "run the same taskfleet version on the master, the workers and the clients",
            )
        if role == Role.WORKER:
            self._joined(name, host, processes, _packages(job_packages))
        lt = self.board.lease_timeout
        return HelloReply(
            protocol=PROTOCOL_VERSION,
            lease_timeout=lt,
            heartbeat_interval=defaults.heartbeat_interval(lt),
        )

    def heartbeat(
        self, worker: str, host: str, held: Sequence[tuple[str, int]]
    ) -> list[tuple[Any, ...]]:
        """Extend the held leases; reply with the chunks the worker should stop."""
        self._joined(worker, host)
        return wire(self.board.heartbeat(worker, [ChunkId._make(c) for c in held], host))

    def lease(self, worker: str, n: int, wait: float = 0.0) -> list[tuple[Any, ...]]:
        leases = self.board.lease(worker, max(0, int(n)), min(float(wait), defaults.MAX_FETCH_WAIT))
        if any(lease.payload == STORED for lease in leases):
            leases = self._load_items(leases)
        return wire(leases)

    def _load_items(self, leases: list[Lease]) -> list[Lease]:
        """Fill in the items of item-list chunks from the journal (a few chunks per call:
        the master never holds a job's whole item list). A chunk whose items cannot be
        read fails its job with the reason; the other leases go out."""
        wanted: dict[str, list[int]] = {}
        for lease in leases:
            if lease.payload == STORED:
                wanted.setdefault(lease.job_id, []).append(lease.chunk)
        found: dict[str, dict[int, bytes]] = {}
        broken: dict[str, str] = {}
        for job_id, chunks in wanted.items():
            try:
                found[job_id] = self.journal.chunk_items(job_id, chunks)
            except sqlite3.Error as exc:
                broken[job_id] = f"its items cannot be read from the journal ({exc})"
                continue
            missing = [c for c in chunks if c not in found[job_id]]
            if missing:
                broken[job_id] = f"the journal has no items for its chunk {missing[0]}"
        for job_id, why in broken.items():
            self._fail(job_id, why)
        out = []
        for lease in leases:
            if lease.payload != STORED:
                out.append(lease)
            elif lease.job_id not in broken:
                out.append(lease._replace(payload=("pickled", found[lease.job_id][lease.chunk])))
        return out

    def _fail(self, job_id: str, why: str) -> None:
        """Fail a running job for a reason of the master's own (journaled, logged)."""
        with self._commit:
            if self.board.fail_job(job_id, why):
                try:
                    self.journal.set_state(job_id, JobState.FAILED, why)
                except sqlite3.Error as exc:
                    self.log.error("job %s: cannot journal its failure: %s", job_id, exc)
        self.log.error("job %s failed: %s", job_id, why)
        self._changed()

    def complete(self, worker: str, host: str, results: Sequence[Sequence[Any]]) -> Ack:
        """Accept results (failed attempts are retried, fail the job or are skipped);
        journal everything in one transaction; only then acknowledge."""
        if not results:
            return Ack(accepted=0, duplicates=0)
        parsed = {}
        for raw in results:
            r = Result.from_wire(raw)
            parsed[ChunkId(r.job_id, r.chunk)] = r
        failed = {cid: r.failed for cid, r in parsed.items() if r.failed}
        with self._commit:
            outcome = self.board.complete(worker, list(parsed), host, failed)
            summaries = {}
            for cid, attempt in outcome.attempts.items():
                errors_of = parsed[cid].errors
                first = errors_of[0] if errors_of else None
                index = self._item_index(cid, first.position if first is not None else 0)
                summaries[cid] = failure_summary(first, index, attempt, worker, host)
            for job_id, cid in outcome.failed_jobs.items():
                self.board.set_error(job_id, summaries[cid])
            self._journal(outcome, parsed, summaries, worker, host)
            # Counted once journaled: a failed write takes the outcome back (JournalError).
            self.counters.add_attempts(len(outcome.attempts), len(outcome.retried))
        self._log_failures(outcome, parsed, summaries, worker)
        self._changed()
        for job_id in outcome.finished_jobs:
            self._log_done(job_id)
        return Ack(accepted=len(outcome.accepted), duplicates=outcome.duplicates)

    def _journal(
        self,
        outcome: CompleteOutcome,
        parsed: dict[ChunkId, Result],
        summaries: dict[ChunkId, str],
        worker: str,
        host: str,
    ) -> None:
        """Write what ``board.complete`` decided in one transaction (``_commit`` held);
        when that fails, take the accepted chunks back so they run again."""
        rows = [DoneRow(c.job_id, c.chunk, worker, host, parsed[c].blob) for c in outcome.accepted]
        accepted = set(outcome.accepted)
        dups = Counter(c.job_id for c in parsed if c not in accepted and c not in outcome.attempts)
        items_failed = Counter[str]()
        for cid, count in outcome.skipped.items():
            items_failed[cid.job_id] += count
        for job_id, cid in outcome.failed_jobs.items():
            items_failed[job_id] += parsed[cid].failed
        errors = self._error_rows(outcome, parsed, worker, host)
        try:
            self.journal.record_done(
                rows,
                dups,
                failed={(c.job_id, c.chunk): n for c, n in outcome.skipped.items()},
                items_failed=items_failed,
                errors=errors,
                finished=outcome.finished_jobs,
                states={
                    job_id: (JobState.FAILED, summaries.get(cid))
                    for job_id, cid in outcome.failed_jobs.items()
                },
            )
        except Exception as exc:
            self.board.undo_complete(worker, outcome.accepted, outcome.skipped)
            self.log.error("journal write failed, %d chunks will run again: %s", len(rows), exc)
            raise JournalError(
                f"the master could not journal results: {exc}",
                "free space on the master's journal volume; the results are kept and sent again",
            ) from None
        for job_id, count in Counter(e.job_id for e in errors).items():
            self._error_counts[job_id] = self._error_counts.get(job_id, 0) + count

    def _item_index(self, cid: ChunkId, position: int) -> int:
        """The position in the job of an item named by its position in a chunk."""
        if not self.board.has_job(cid.job_id):
            return position
        return cid.chunk * self.board.spec(cid.job_id).chunk_size + position

    def _retries(self, job_id: str) -> int:
        return self.board.spec(job_id).retries if self.board.has_job(job_id) else 0

    def _error_rows(
        self, outcome: CompleteOutcome, parsed: dict[ChunkId, Result], worker: str, host: str
    ) -> list[ErrorRow]:
        """Failure records of this call's failed attempts, within each job's cap."""
        out: list[ErrorRow] = []
        room: dict[str, int] = {}
        final = set(outcome.skipped) | set(outcome.failed_jobs.values())
        for cid, attempt in outcome.attempts.items():
            job_id = cid.job_id
            if job_id not in room:
                room[job_id] = defaults.MAX_JOB_ERRORS - self._error_counts.get(job_id, 0)
            for f in parsed[cid].errors:
                if room[job_id] <= 0:
                    break
                room[job_id] -= 1
                out.append(
                    ErrorRow(
                        job_id,
                        cid.chunk,
                        self._item_index(cid, f.position),
                        attempt,
                        cid in final,
                        worker,
                        host,
                        f.kind,
                        f.type,
                        f.message,
                        f.item,
                        f.traceback,
                    )
                )
        return out

    def _log_failures(
        self,
        outcome: CompleteOutcome,
        parsed: dict[ChunkId, Result],
        summaries: dict[ChunkId, str],
        worker: str,
    ) -> None:
        for cid in outcome.retried:
            self.log.warning(
                "job %s: chunk %d failed on worker %s (attempt %d of %d; %d items failed): %s;"
                " it runs again",
                cid.job_id,
                cid.chunk,
                worker,
                outcome.attempts[cid],
                self._retries(cid.job_id) + 1,
                parsed[cid].failed,
                summaries.get(cid, ""),
            )
        for cid, count in outcome.skipped.items():
            self.log.warning(
                "job %s: chunk %d: %d items failed after %d attempts; kept as failed (skip)",
                cid.job_id,
                cid.chunk,
                count,
                outcome.attempts[cid],
            )
        for job_id, cid in outcome.failed_jobs.items():
            self.log.error(
                "job %s failed: chunk %d failed %d times: %s",
                job_id,
                cid.chunk,
                outcome.attempts[cid],
                summaries.get(cid, ""),
            )

    def _changed(self) -> None:
        """Wake every long-poll waiting on results or job states."""
        with self._results:
            self._generation += 1
            self._results.notify_all()

    def exchange(
        self,
        worker: str,
        host: str,
        results: Sequence[Sequence[Any]],
        want: int,
        wait: float = 0.0,
        held: Sequence[tuple[str, int]] = (),
    ) -> tuple[Ack, list[tuple[Any, ...]], list[tuple[Any, ...]]]:
        """complete() then lease(), in one round trip; and which ``held`` chunks to stop."""
        ack = self.complete(worker, host, results)
        leases = self.lease(worker, want, wait) if want > 0 else []
        return ack, leases, wire(self.board.to_stop([ChunkId._make(c) for c in held]))

    def release(self, worker: str, chunks: Sequence[tuple[str, int]]) -> int:
        return self.board.release(worker, [ChunkId._make(c) for c in chunks])

    def goodbye(self, worker: str, chunks: Sequence[tuple[str, int]]) -> int:
        count = self.board.release(worker, [ChunkId._make(c) for c in chunks])
        self.board.forget_worker(worker)
        with self._lost_lock:
            self._lost.pop(worker, None)
            self._hosts.pop(worker, None)
        self.log.info("worker %s left (drained; %d chunks given back)", worker, count)
        return count

    # -- clients -------------------------------------------------------------

    def submit(
        self,
        job_id: str,
        job: str,
        chunk_size: int,
        start: int = 0,
        stop: int = 0,
        items: Sequence[Any] | None = None,
        step: int = 1,
        options: JobOptions | None = None,
    ) -> SubmitReply:
        """Create a job in one call (idempotent per ``job_id``): a range job, or a short
        item list (at most ``max(UPLOAD_BATCH_ITEMS, chunk_size)`` items; longer lists
        are uploaded with open/append/seal). Everything is checked before it is journaled.
        """
        _check_job_id(job_id)
        chunk_size = check_chunk_size(chunk_size)
        opts = check_options(options)
        if self.board.has_job(job_id):
            return self._submitted(self.board.spec(job_id))
        chunks: list[bytes] = []
        if items is None:
            check_range(start, stop, step, chunk_size)
            jobs.validate(job, None)
            listed = None
        else:
            if not isinstance(items, list | tuple):
                raise BadJobArguments(
                    f"items must be a list, not {type(items).__name__}", "send a list of items"
                )
            if not items:
                raise BadJobArguments(
                    "no items to process", "put one item per line in the items file"
                )
            most = max(defaults.UPLOAD_BATCH_ITEMS, chunk_size)
            if len(items) > most:
                raise BadJobArguments(
                    f"{len(items):,} items in one submit call; at most {most:,} fit in one",
                    "send longer lists with open/append/seal (taskfleet.Client does)",
                )
            jobs.validate(job, items)
            chunks = _pickled_chunks(items, chunk_size, 0)
            listed, start, stop, step = len(items), 0, 0, 1
        spec = JobSpec(
            job_id,
            job,
            chunk_size,
            start,
            stop,
            listed,
            time.time(),
            step,
            opts["retries"],
            opts["on_error"],
            opts["item_timeout"],
            jobs.code_version(job),
        )
        with self._submit:
            if self.board.has_job(job_id):
                return self._submitted(self.board.spec(job_id))
            self.journal.add_job(spec, chunks)
            self._start_job(spec)
        return self._submitted(spec)

    def _start_job(self, spec: JobSpec) -> None:
        """Put a journaled job on the board (``_submit`` held)."""
        self.board.add_job(spec)
        self._job_started[spec.id] = time.monotonic()
        self.log.info(
            "job %s submitted: %s%s over %d items in %d chunks (retries %d, on error %s%s)",
            spec.id,
            spec.job,
            f" ({spec.code_version})" if spec.code_version else "",
            spec.n_items,
            spec.n_chunks,
            spec.retries,
            spec.on_error,
            f", item timeout {spec.item_timeout:g}s" if spec.item_timeout else "",
        )
        self._changed()

    @staticmethod
    def _submitted(spec: JobSpec) -> SubmitReply:
        return SubmitReply(
            id=spec.id,
            job=spec.job,
            n_items=spec.n_items,
            n_chunks=spec.n_chunks,
            code_version=spec.code_version,
            result_types=jobs.declared_result_types(spec.job),
        )

    # -- uploads: open, append, seal ---------------------------------------------------

    def open(
        self, job_id: str, job: str, chunk_size: int, options: JobOptions | None = None
    ) -> UploadReply:
        """Begin an upload of an item list (idempotent per ``job_id``): checks the name
        and options now, the items batch by batch in :meth:`append`."""
        _check_job_id(job_id)
        chunk_size = check_chunk_size(chunk_size)
        opts = check_options(options)
        jobs.validate(job, None)
        with self._submit:
            upload = self._uploads.get(job_id)
            if upload is not None:
                return self._upload_reply(upload)
            if self.board.has_job(job_id):  # sealed already: a resent open after a lost reply
                spec = self.board.spec(job_id)
                return UploadReply(id=job_id, seq=-1, n_items=spec.n_items)
            spec = JobSpec(
                job_id,
                job,
                chunk_size,
                listed=0,
                created=time.time(),
                retries=opts["retries"],
                on_error=opts["on_error"],
                item_timeout=opts["item_timeout"],
                code_version=jobs.code_version(job),
            )
            self.journal.open_upload(spec)
            upload = _Upload(spec, 0, time.monotonic())
            self._uploads[job_id] = upload
            self.log.info(
                "job %s: upload of its items begins (%s, from %s)", job_id, job, self._peer() or "?"
            )
            return self._upload_reply(upload)

    @staticmethod
    def _upload_reply(upload: _Upload) -> UploadReply:
        return UploadReply(id=upload.spec.id, seq=upload.seq, n_items=upload.spec.n_items)

    def _upload(self, job_id: str) -> _Upload:
        upload = self._uploads.get(job_id)
        if upload is None:
            raise JobNotFound(
                f"no upload of job {job_id!r} on this master (never opened, refused, or"
                f" dropped after {self.upload_timeout:g}s without items)",
                "submit the job again",
            )
        return upload

    def append(self, job_id: str, seq: int, items: Sequence[Any]) -> UploadReply:
        """Add batch ``seq`` of an upload: whole chunks of items (a short last chunk ends
        the items). A batch already received is answered, not added again. A batch that
        is refused (a bad item, a chunk too large, too many chunks) drops the upload."""
        with self._submit:
            upload = self._upload(job_id)
            upload.seen = time.monotonic()
            if isinstance(seq, bool) or not isinstance(seq, int) or seq > upload.seq:
                raise BadJobArguments(
                    f"batch {seq!r} of job {job_id} arrives before batch {upload.seq}",
                    "send the batches in order, from 0",
                )
            if seq < upload.seq:
                return self._upload_reply(upload)
            spec = upload.spec
            try:
                have = spec.n_items
                if have % spec.chunk_size:
                    raise BadJobArguments(
                        f"job {job_id} got items after a short chunk (the last one)",
                        "send whole chunks in every batch but the last",
                    )
                if not isinstance(items, list | tuple) or not items:
                    raise BadJobArguments(
                        f"batch {seq} of job {job_id} holds no items", "send a list of items"
                    )
                check_size(have + len(items), spec.chunk_size)
                jobs.validate(spec.job, items, offset=have)
                chunks = _pickled_chunks(items, spec.chunk_size, have // spec.chunk_size)
                listed = have + len(items)
                self.journal.append_upload(job_id, seq, have // spec.chunk_size, chunks, listed)
            except TaskfleetError as exc:
                self._drop_upload(job_id, f"refused: {exc.what}")
                raise
            upload.spec = replace(spec, listed=listed)
            upload.seq += 1
            return self._upload_reply(upload)

    def seal(self, job_id: str, n_items: int) -> SubmitReply:
        """End an upload: the job runs. ``n_items`` is what the client sent (checked)."""
        with self._submit:
            if job_id not in self._uploads and self.board.has_job(job_id):
                return self._submitted(self.board.spec(job_id))  # a resent seal
            upload = self._upload(job_id)
            spec = upload.spec
            if spec.n_items != n_items:
                raise BadJobArguments(
                    f"job {job_id}: the master received {spec.n_items:,} items,"
                    f" the client sent {n_items!r}",
                    "submit the job again",
                )
            if not n_items:
                self._drop_upload(job_id, "refused: no items")
                raise BadJobArguments(
                    "no items to process", "put one item per line in the items file"
                )
            self.journal.seal_upload(job_id)
            del self._uploads[job_id]
            self._start_job(spec)
        return self._submitted(spec)

    def _drop_upload(self, job_id: str, why: str) -> None:
        """Forget an upload and delete what it journaled (``_submit`` held)."""
        upload = self._uploads.pop(job_id, None)
        if upload is None:
            return
        self.log.warning(
            "job %s: upload dropped after %d items (%s)", job_id, upload.spec.n_items, why
        )
        while not self.journal.delete_job_step(job_id):
            pass

    def resume_upload(self, spec: JobSpec, seq: int) -> None:
        """An upload found in the journal at start: its client may still finish it."""
        with self._submit:
            self._uploads[spec.id] = _Upload(spec, seq, time.monotonic())

    def expire_uploads(self, now: float) -> None:
        """Drop uploads whose client sent nothing for ``upload_timeout`` seconds."""
        with self._submit:
            for job_id, upload in list(self._uploads.items()):
                if now - upload.seen > self.upload_timeout:
                    self._drop_upload(
                        job_id, f"its client sent nothing for {self.upload_timeout:g}s"
                    )

    def _spec(self, job_id: str) -> JobSpec:
        if not isinstance(job_id, str) or not self.board.has_job(job_id):
            raise JobNotFound(
                f"no job {job_id!r} on this master",
                "check the id (taskfleet jobs lists them; finished jobs are pruned after"
                " the master's --keep-for/--keep-jobs)",
            )
        return self.board.spec(job_id)

    def _view(self, job_id: str) -> JobView:
        try:
            return self.board.job_status(job_id)
        except KeyError:  # pruned between two calls
            self._spec(job_id)
            raise

    def job(self, job_id: str) -> tuple[SpecWire, JobView]:
        spec = self._spec(job_id)
        wire_spec = spec.as_wire()
        try:
            wire_spec["result_types"] = jobs.declared_result_types(spec.job)
        except TaskfleetError:  # a job whose package is gone since: plain data only
            wire_spec["result_types"] = []
        return wire_spec, self._view(job_id)

    def jobs(self, limit: int = defaults.JOBS_LIMIT) -> JobList:
        """The newest jobs first (at most ``limit``, capped) and the total count."""
        if isinstance(limit, bool) or not isinstance(limit, int) or limit < 0:
            raise BadJobArguments(f"bad limit {limit!r}", "give a whole number >= 0")
        return self.board.jobs(min(limit, defaults.MAX_JOBS_LIMIT))

    def _long_poll(self, wait: float, ready: Any) -> Any:
        """Call ``ready()`` until it returns something other than None, at most ``wait``
        seconds (capped); every change (results, states) wakes it. The last answer is
        ``ready(True)`` (its "time is up" call)."""
        deadline = time.monotonic() + max(0.0, min(float(wait), defaults.MAX_FETCH_WAIT))
        while True:
            with self._results:
                generation = self._generation
            answer = ready(time.monotonic() >= deadline)
            if answer is not None:
                return answer
            with self._results:
                if self._generation == generation:
                    self._results.wait(max(0.0, deadline - time.monotonic()))

    def wait(self, job_id: str, wait: float = defaults.FETCH_WAIT) -> JobView:
        """The job's view as soon as it has finished, or after ``wait`` seconds."""
        self._spec(job_id)

        def ready(last: bool) -> JobView | None:
            view = self._view(job_id)
            return view if last or _finished(view) else None

        result: JobView = self._long_poll(wait, ready)
        return result

    def fetch(
        self,
        job_id: str,
        after_seq: int,
        max_items: int = defaults.FETCH_MAX_ITEMS,
        wait: float = defaults.FETCH_WAIT,
        items: bool = False,
    ) -> tuple[list[tuple[Any, ...]], JobView]:
        """Results journaled after ``after_seq`` (completion order), with the chunks'
        stored items when ``items`` is true; long-polls up to ``wait`` s when there are
        none."""
        spec = self._spec(job_id)
        with_items = bool(items) and spec.listed is not None

        def ready(last: bool) -> tuple[list[tuple[Any, ...]], JobView] | None:
            rows = self.journal.fetch(job_id, after_seq, max_items, spec.chunk_size, with_items)
            view = self._view(job_id)
            if rows or last or _finished(view):
                return wire(rows), view
            return None

        result: tuple[list[tuple[Any, ...]], JobView] = self._long_poll(wait, ready)
        return result

    def fetch_ordered(
        self,
        job_id: str,
        from_chunk: int,
        max_items: int = defaults.FETCH_MAX_ITEMS,
        wait: float = defaults.FETCH_WAIT,
        items: bool = False,
    ) -> tuple[list[tuple[Any, ...]], JobView]:
        """Results of chunks ``from_chunk, from_chunk+1, …`` (input order) up to the
        first one not done, with their stored items when ``items`` is true; long-polls
        up to ``wait`` s until ``from_chunk`` is done.

        A reader keeps only one reply in memory however slow one chunk is.
        """
        spec = self._spec(job_id)
        with_items = bool(items) and spec.listed is not None

        def ready(last: bool) -> tuple[list[tuple[Any, ...]], JobView] | None:
            view = self._view(job_id)
            rows = []
            if 0 <= from_chunk < spec.n_chunks and self.board.is_chunk_done(job_id, from_chunk):
                rows = self.journal.fetch_ordered(
                    job_id, from_chunk, max_items, spec.chunk_size, with_items
                )
            ended = from_chunk >= spec.n_chunks or view["state"] in (
                JobState.FAILED,
                JobState.CANCELLED,
            )
            # A done job's last rows may still be committing: wait for them.
            if rows or last or ended:
                return wire(rows), view
            return None

        result: tuple[list[tuple[Any, ...]], JobView] = self._long_poll(wait, ready)
        return result

    def errors(self, job_id: str, limit: int = defaults.MAX_JOB_ERRORS) -> list[ErrorView]:
        """The job's failure records (tracebacks included), oldest first."""
        self._spec(job_id)
        return self.journal.errors(job_id, max(0, min(int(limit), defaults.MAX_JOB_ERRORS)))

    def cancel(self, job_id: str) -> JobView:
        """Cancel a pending or running job (journaled), or drop an upload in progress with
        what it journaled; a finished job is left as it is."""
        with self._submit:
            upload = self._uploads.get(job_id)
            if upload is not None:
                self._drop_upload(job_id, f"cancelled from {self._peer() or '?'}")
                spec = upload.spec
                return JobView(
                    id=spec.id,
                    job=spec.job,
                    state=JobState.CANCELLED.value,
                    chunks={"pending": 0, "leased": 0, "done": 0},
                    items_total=spec.n_items,
                    items_done=0,
                    duplicates=0,
                )
        self._spec(job_id)
        with self._commit:
            if self.board.cancel_job(job_id):
                self.journal.set_state(job_id, JobState.CANCELLED)
                view = self._view(job_id)
                self.log.info(
                    "job %s cancelled (from %s): %d/%d items were done",
                    job_id,
                    self._peer() or "?",
                    view["items_done"],
                    view["items_total"],
                )
        self._changed()
        return self._view(job_id)

    def status(self) -> StatusView:
        view = self.board.status(defaults.STATUS_FINISHED_JOBS)
        return StatusView(
            master={
                "address": self.address,
                "uptime_s": round(time.monotonic() - self.started, 1),
                "version": __version__,
                "tls": self._tls_view(),
                "lease_timeout_s": self.board.lease_timeout,
                "journal": observe.journal_view(self.journal.path),
                "process": observe.process_view(),
                "http": self.http_address,
            },
            workers=view["workers"],
            lost_workers=self._lost_view({w["name"] for w in view["workers"]}),
            jobs=view["jobs"],
            jobs_not_listed=view["not_listed"],
            jobs_by_state=view["by_state"],
        )

    def _tls_view(self) -> TLSView:
        if self.certs is None:
            return TLSView(enabled=False)
        return describe(*self.certs)

    def _lost_view(self, connected: set[str]) -> list[LostWorkerView]:
        """Silent workers that have not come back, for at most LOST_WORKER_WINDOW seconds."""
        now = time.monotonic()
        with self._lost_lock:
            for name in [n for n, (_, t) in self._lost.items() if n in connected]:
                del self._lost[name]  # back (by a lease or a heartbeat)
            for name in [
                n for n, (_, t) in self._lost.items() if now - t > defaults.LOST_WORKER_WINDOW
            ]:
                del self._lost[name]
                self._hosts.pop(name, None)
            lease = self.board.lease_timeout
            return [
                LostWorkerView(name=n, host=h, last_heartbeat_age_s=round(lease + now - t, 1))
                for n, (h, t) in self._lost.items()
            ]

    def close(self) -> None:
        """Close the journal once an in-flight commit has finished (the master is stopping)."""
        with self._commit:
            self.journal.close()

    # -- housekeeping -----------------------------------------------------------

    def _log_done(self, job_id: str) -> None:
        st = self.board.job_status(job_id)
        took = time.monotonic() - self._job_started.get(job_id, self.started)
        rate = st["items_done"] / took if took > 0 else 0.0
        self.log.info(
            "job %s done: %d items in %.1fs (%.0f items/s), %d duplicate results dropped",
            job_id,
            st["items_done"],
            took,
            rate,
            st["duplicates"],
        )

    def tick(self, log_progress: bool) -> None:
        """Reap expired leases and idle uploads; log workers gone silent and job progress."""
        self.expire_uploads(time.monotonic())
        report = self.board.reap()
        if report.gone:
            now = time.monotonic()
            with self._lost_lock:
                for worker in report.gone:
                    self._lost[worker] = (self._hosts.get(worker, "?"), now)
                while len(self._lost) > defaults.MAX_LOST_WORKERS:
                    self._hosts.pop(next(iter(self._lost)), None)
                    del self._lost[next(iter(self._lost))]
        for worker in report.gone:
            self.log.warning(
                "worker %s left (silent for more than %gs); its leases go back to pending",
                worker,
                self.board.lease_timeout,
            )
        self.counters.add_lease_expiries(sum(report.requeued.values()))
        for worker, count in report.requeued.items():
            self.log.info("%d chunks leased to %s expired and are pending again", count, worker)
        if log_progress:
            for job in self.board.status(0)["jobs"]:
                if job["state"] == JobState.RUNNING and job["items_done"]:
                    pct = 100.0 * job["items_done"] / max(1, job["items_total"])
                    self.log.info(
                        "job %s: %d/%d items (%.0f%%), chunks %s",
                        job["id"],
                        job["items_done"],
                        job["items_total"],
                        pct,
                        job["chunks"],
                    )

    def prune(self, keep_jobs: int, keep_for: float, budget: float, now: float) -> None:
        """Retention: forget finished jobs beyond ``keep_jobs`` or older than ``keep_for``
        seconds (0: no limit), then delete their journal rows and give the space back,
        a batch at a time, for at most ``budget`` seconds per call."""
        finished = self.board.finished_jobs()
        doomed: dict[str, str] = {}
        if keep_jobs > 0 and len(finished) > keep_jobs:
            for job_id, _ in finished[: len(finished) - keep_jobs]:
                doomed[job_id] = f"more than {keep_jobs} finished jobs"
        if keep_for > 0:
            for job_id, when in finished:
                if now - when > keep_for:
                    doomed.setdefault(job_id, f"finished more than {keep_for:g}s ago")
        for job_id, why in doomed.items():
            if self.board.remove_job(job_id):
                self._pruning.append(job_id)
                self._error_counts.pop(job_id, None)
                self._job_started.pop(job_id, None)
                self.log.info("job %s pruned (%s)", job_id, why)
        if doomed:
            self._changed()
        deadline = time.monotonic() + budget
        while self._pruning and time.monotonic() < deadline:
            if self.journal.delete_job_step(self._pruning[0]):
                self._pruning.pop(0)
        while not self._pruning and time.monotonic() < deadline:
            if not self.journal.vacuum_step():
                break


for _name in EXPOSED:
    setattr(BoardService, _name, _reported(_name, getattr(BoardService, _name)))


def _bind_error(host: str, port: int, exc: OSError, http: bool = False) -> BindError:
    """One line for a failed bind of the manager port (``--bind``/``--port``) or of the
    HTTP port (``--http``)."""
    where = format_hostport(host, port)
    host_opt, port_opt = ("--http", "--http port") if http else ("--bind", "--port")
    if isinstance(exc, socket.gaierror):
        return BindError(
            f"cannot resolve {host_opt} {host!r}", "use an IP address of this machine or 0.0.0.0"
        )
    if exc.errno == errno.EADDRINUSE:
        return BindError(
            f"port {port} on {host} is already in use",
            f"stop what listens there (ss -ltnp 'sport = :{port}') or choose another {port_opt}",
        )
    if exc.errno == errno.EADDRNOTAVAIL:
        return BindError(
            f"cannot bind {where}: {host} is not an address of this machine",
            "use one of this host's addresses (ip -brief addr) or 0.0.0.0",
        )
    if exc.errno == errno.EACCES:
        return BindError(
            f"cannot bind {where}: permission denied",
            "use a port above 1023 or run with the right capability",
        )
    checks = "--http" if http else "--bind and --port"
    return BindError(f"cannot bind {where}: {exc.strerror or exc}", f"check {checks}")


class Master:
    """Lifecycle: bind, lock and open the journal, resume its jobs, serve, stop on
    SIGTERM/SIGINT.

    ``start`` raises BindError, JournalInUse (another master holds the journal),
    JournalDamaged (a corrupt or foreign file) or JournalError, having changed nothing.
    """

    def __init__(
        self,
        bind: str,
        port: int,
        authkey: bytes,
        journal_path: str | None,
        lease_timeout: float,
        log: logging.Logger,
        http: tuple[str, int] | None = None,
        keep_jobs: int = defaults.KEEP_JOBS,
        keep_for: float = defaults.KEEP_FOR,
        upload_timeout: float = defaults.UPLOAD_IDLE_TIMEOUT,
        *,
        tls: TLSConfig | None = None,
    ) -> None:
        self.bind, self.port = bind, port
        self._http = http
        self.upload_timeout = upload_timeout
        self._lock: JournalLock | None = None
        self._authkey = authkey
        self._tls = tls
        self._journal_path = journal_path
        self.lease_timeout = lease_timeout
        self.keep_jobs, self.keep_for = keep_jobs, keep_for
        self.log = log
        self._stop = threading.Event()
        self._started_wall = time.time()
        self._tmpdir: str | None = None
        self.service: BoardService | None = None
        self.server: TaskfleetServer | None = None
        self.web: WebServer | None = None
        self.observer: Observer | None = None

    def start(self) -> None:
        """Bind first (so a bad address changes nothing), then the journal, then serve."""
        self.board = Board(self.lease_timeout)
        certs = self._tls.check() if self._tls is not None else None  # TLSError: nothing bound
        try:
            server = TaskfleetServer(
                self._board_handle,
                EXPOSED,
                (self.bind, self.port),
                self._authkey,
                self.log,
                tls=self._tls,
            )
        except OSError as exc:
            raise _bind_error(self.bind, self.port, exc) from None
        web = None
        if self._http is not None:
            try:
                web = self._bind_http(server, *self._http)
            except BaseException:
                server.stop()
                raise
        # The bound port (--port 0 asks the kernel for a free one).
        bound: Any = server.address
        address = format_hostport(self.bind, int(bound[1]))
        try:
            path = self._journal_path
            if path is None:
                self._tmpdir = tempfile.mkdtemp(prefix="taskfleet-")
                path = os.path.join(self._tmpdir, "journal.db")
                self.log.warning(
                    "no --journal: jobs live in %s and are lost when the master stops", path
                )
            self._lock = JournalLock(path)
            self._lock.acquire()
            journal = Journal(path)
            try:
                service = BoardService(self.board, journal, self.log, address, self.upload_timeout)
                service.server = server
                service.certs = certs
                resumed = self._resume(service, journal)
            except sqlite3.Error as exc:
                journal.close()
                if is_damage(exc):
                    raise damaged(path, str(exc)) from None
                raise JournalError(
                    f"cannot read journal {path}: {exc}", "check the journal's disk and mode"
                ) from None
        except BaseException:
            server.stop()
            if web is not None:
                web.stop()
            self._cleanup()
            raise
        self.service, self.server = service, server
        server.start()
        self.log.info(
            "master %s listening on %s (%s, journal %s, lease timeout %gs, %d jobs resumed;"
            " keeping %s finished jobs for %s)",
            __version__,
            address,
            "mutual TLS" if certs is not None else "plaintext: no TLS",
            path,
            self.lease_timeout,
            resumed,
            self.keep_jobs or "all",
            f"{self.keep_for:g}s" if self.keep_for else "ever",
        )
        if certs is not None:
            self._check_names(certs[0])
        if web is not None:
            self._serve_http(web, service)

    def _check_names(self, cert: CertInfo) -> None:
        """Warn when the certificate does not name the bind address: clients dialling it
        will refuse the master (they check the address against the certificate)."""
        if self.bind in ("0.0.0.0", "::") or self.bind in cert.names():  # noqa: S104
            return
        self.log.warning(
            "the TLS certificate names %s, not the bind address %s: clients that dial %s"
            " will refuse it — issue the certificate for this address (make rotate-tls)",
            ", ".join(cert.names()) or "no address",
            self.bind,
            self.bind,
        )

    def _bind_http(self, server: TaskfleetServer, host: str, port: int) -> WebServer:
        """Bind the HTTP port (BindError naming --http); served once the board is up."""
        static = load_static()
        self.observer = Observer(lambda: self._board_handle().status(), self.log)
        app = WebApp(self.observer, lambda: self._live(server), static)
        try:
            return WebServer((host, port), app, self.log)
        except OSError as exc:
            raise _bind_error(host, port, exc, http=True) from None

    def _serve_http(self, web: WebServer, service: BoardService) -> None:
        assert self.observer is not None
        host, port = web.address
        service.http_address = format_hostport(host, port)
        self.observer.start()
        web.start()
        self.web = web
        self.log.info(
            "HTTP on http://%s/ (dashboard, /metrics, /healthz, /api/status; read-only)",
            service.http_address,
        )

    def _live(self, server: TaskfleetServer) -> metrics.Live:
        """Figures /metrics reads at scrape time."""
        assert self.service is not None
        requests, dropped = self.web.counts() if self.web is not None else ({}, {})
        proc = observe.process_view()
        return metrics.Live(
            lease_expiries=self.service.counters.lease_expiries,
            failed_attempts=self.service.counters.failed_attempts,
            retries=self.service.counters.retries,
            handshakes_refused=server.refused_handshakes(),
            cpu_seconds=proc["cpu_seconds"],
            rss_bytes=proc["rss_bytes"],
            start_time=self._started_wall,
            threads=threading.active_count(),
            open_fds=observe.open_fds(),
            http_requests=requests,
            http_dropped=dropped,
        )

    def _resume(self, service: BoardService, journal: Journal) -> int:
        """Put every journaled job back on the board; return how many are still running.

        An entry that cannot be loaded (a damaged item list, impossible values, a job
        larger than the master holds) becomes a failed job with the reason, journaled;
        a damaged file raises sqlite3.DatabaseError (the caller refuses it).
        """
        service.set_error_counts(journal.error_counts())
        resumed = 0
        for entry in journal.jobs():
            spec = entry.spec
            if entry.upload_seq is not None:
                service.resume_upload(spec, entry.upload_seq)
                self.log.info(
                    "job %s: upload of its items resumes at batch %d (%d items so far)",
                    spec.id,
                    entry.upload_seq,
                    spec.n_items,
                )
                continue
            problem = entry.problem
            if problem is None:
                try:
                    check_size(spec.n_items, spec.chunk_size)
                    self._add(journal, entry)
                except TaskfleetError as exc:
                    problem = exc.what
                except sqlite3.Error:
                    raise
                except Exception as exc:  # MemoryError, a value no submit let through
                    problem = f"{type(exc).__name__}: {_one_line(str(exc), 200)}"
            if problem is not None:
                self._load_failed(journal, entry, problem)
                continue
            st = self.board.job_status(spec.id)
            if not _finished(st):
                resumed += 1
                self.log.info(
                    "resumed job %s (%s): %d/%d chunks done",
                    spec.id,
                    spec.job,
                    st["chunks"]["done"],
                    spec.n_chunks,
                )
        return resumed

    def _add(self, journal: Journal, entry: JournaledJob) -> None:
        spec, state = entry.spec, entry.state
        running = state == JobState.RUNNING
        self.board.add_job(
            spec,
            () if state == JobState.DONE else journal.done_chunks(spec.id),
            entry.duplicates,
            state,
            entry.error,
            items_failed=entry.items_failed,
            finished=entry.finished,
            attempts=journal.attempts(spec.id) if running else None,
        )

    def _load_failed(self, journal: Journal, entry: JournaledJob, problem: str) -> None:
        """List a job the master could not load as failed, with the reason (journaled once:
        a job that failed already keeps its error, and is not reported again)."""
        error = entry.error or problem
        if entry.state != JobState.FAILED:
            error = _one_line(f"the master could not load this job: {problem}")
            self.log.error(
                "job %s cannot be loaded (%s); it is marked failed", entry.spec.id, problem
            )
            journal.set_state(entry.spec.id, JobState.FAILED, error)
        self.board.add_job(
            entry.spec,
            (),
            entry.duplicates,
            JobState.FAILED,
            error,
            finished=time.time(),
            held=False,
        )

    def _board_handle(self) -> BoardService:
        """The registered ``get_board`` callable: a bound method, never pickled."""
        assert self.service is not None
        return self.service

    def _cleanup(self) -> None:
        """Release the journal (its lock, a temporary one's folder); the journal is closed."""
        if self._lock is not None:
            self._lock.release()
            self._lock = None
        if self._tmpdir is not None:
            shutil.rmtree(self._tmpdir, ignore_errors=True)

    def _housekeeping(self) -> None:
        assert self.service is not None
        period = min(1.0, max(0.1, self.lease_timeout / 10))
        last_progress = time.monotonic()
        while not self._stop.wait(period):
            now = time.monotonic()
            progress = now - last_progress >= 10.0
            if progress:
                last_progress = now
            try:
                self.service.tick(progress)
                self.service.prune(self.keep_jobs, self.keep_for, period / 2, time.time())
            except Exception as exc:  # housekeeping must never kill the master
                self.log.error("housekeeping failed: %s", exc)

    def stop(self) -> None:
        self._stop.set()

    def serve_forever(self) -> None:
        """Serve until SIGTERM/SIGINT (main thread only)."""
        for sig in (signal.SIGTERM, signal.SIGINT):
            signal.signal(sig, lambda signum, frame: self._stop.set())
        threading.Thread(target=self._housekeeping, name="housekeeping", daemon=True).start()
        self._stop.wait()
        self.log.info("master stopping")
        self.close()
        self.log.info("master stopped")

    def close(self) -> None:
        """Stop serving, close the journal, release its lock (after a successful start)."""
        assert self.server is not None and self.service is not None
        if self.web is not None:
            self.web.stop()
        if self.observer is not None:
            self.observer.stop()
        self.server.stop()
        self.service.close()
        self._cleanup()

"""The board: jobs, chunks and leases — a thread-safe, I/O-free state machine.

A job is split into chunks of ``chunk_size`` items. Each chunk is *pending*,
*leased* (to a worker, until a deadline) or *done*. Workers lease several
chunks per call, heartbeats extend the leases of the chunks a worker says it
holds, and :meth:`Board.reap` returns expired leases to pending. A chunk is
accepted once; later completions are counted as duplicates and dropped, so
execution is at-least-once and results exactly-once per chunk.

Range jobs (``--range N``) are never materialised: a chunk is computed from
its index, pending chunks are "everything from the cursor on" plus a small
requeue set, and done chunks are one bit each. A 100,000,000-item job with
chunks of 1,000 costs about 12 KB here. Item-list jobs are not held here
either: the journal keeps their items per chunk, and the board hands out a
``("stored",)`` payload that the master fills in with the chunk's items. What
the board does hold per job, one bit per chunk, is bounded by
:func:`check_size` (``defaults.MAX_JOB_CHUNKS``), which the master applies
before anything is journaled.

The clock is injectable (tests drive time by hand); nothing here touches the
disk or the network — the master journals around it. The one deliberate
exception is :meth:`Board.lease` with ``wait`` > 0: an idle worker's long-poll
blocks on a condition in real time, so it wakes the moment work arrives.

Failures: a worker reports a chunk with failed items as a failed attempt.
The board counts attempts per chunk and remembers which workers failed it;
up to the job's ``retries`` the chunk goes back to pending (and for a while
to another connected worker first), then the job's ``on_error`` decides:
``fail`` ends the job (nothing more is handed out), ``skip`` accepts the
chunk with its failed items counted. A cancelled or failed job stops: its
leases are dropped, and heartbeats tell the workers holding its chunks to
stop them (:meth:`Board.heartbeat` returns them).

State is changed only through the Board's methods, each under one lock; the
per-job counters are correlated (see :class:`_JobState`) and
:meth:`Board.check` recomputes them by brute force (the tests call it after
every scenario).
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field
from itertools import islice
from typing import TypedDict

from taskfleet import defaults
from taskfleet.errors import BadJobArguments
from taskfleet.protocol import (
    ChunkId,
    JobList,
    JobOptions,
    JobState,
    JobView,
    Lease,
    OnError,
    Payload,
    SpecWire,
    WorkerView,
)

STORED: Payload = ("stored",)
"""The payload the board hands out for a chunk of an item-list job: the master replaces it
with the chunk's items from the journal (the board does no I/O)."""


def range_length(start: int, stop: int, step: int) -> int:
    """``len(range(start, stop, step))`` by arithmetic: len() refuses ranges longer than
    sys.maxsize. A step of 0 is an empty range here (``range()`` refuses it)."""
    if step > 0:
        return max(0, (stop - start + step - 1) // step)
    if step < 0:
        return max(0, (start - stop - step - 1) // -step)
    return 0


def check_size(n_items: int, chunk_size: int) -> None:
    """Refuse a job the master cannot hold: more than ``defaults.MAX_JOB_CHUNKS`` chunks.

    Raises BadJobArguments naming the limit and the chunk size that would fit.
    """
    n_chunks = -(-n_items // chunk_size)
    if n_chunks <= defaults.MAX_JOB_CHUNKS:
        return
    limit = defaults.MAX_JOB_CHUNKS
    fits = -(-n_items // limit)
    what = (
        f"{n_items:,} items in chunks of {chunk_size:,} make {n_chunks:,} chunks;"
        f" a job has at most {limit:,} (the master keeps one bit per chunk)"
    )
    if fits <= defaults.MAX_CHUNK_SIZE:
        raise BadJobArguments(what, f"use --chunk-size {fits} or more, or split the job")
    most = limit * defaults.MAX_CHUNK_SIZE
    raise BadJobArguments(what, f"split it into jobs of at most {most:,} items")


@dataclass(frozen=True)
class JobSpec:
    """What was submitted: a range job over ``range(start, stop, step)``, or (``listed``
    set) an item-list job of ``listed`` items that the journal keeps chunk by chunk."""

    id: str
    job: str
    chunk_size: int
    start: int = 0
    stop: int = 0
    listed: int | None = None
    created: float = 0.0
    step: int = 1
    retries: int = defaults.RETRIES
    on_error: str = OnError.FAIL.value
    item_timeout: float | None = None
    # The code the master resolved the job name to at submit (jobs.code_version).
    code_version: str = ""

    @property
    def item_range(self) -> range:
        """The items of a range job (never expanded)."""
        return range(self.start, self.stop, self.step)

    @property
    def n_items(self) -> int:
        if self.listed is not None:
            return self.listed
        return range_length(self.start, self.stop, self.step)

    @property
    def n_chunks(self) -> int:
        return -(-self.n_items // self.chunk_size)

    @property
    def options(self) -> JobOptions:
        return JobOptions(
            retries=self.retries, on_error=self.on_error, item_timeout=self.item_timeout
        )

    def bounds(self, index: int) -> tuple[int, int]:
        """Item positions [lo, hi) of chunk ``index`` (0-based, within the job)."""
        lo = index * self.chunk_size
        return lo, min(lo + self.chunk_size, self.n_items)

    def chunk_len(self, index: int) -> int:
        lo, hi = self.bounds(index)
        return hi - lo

    def payload(self, index: int) -> Payload:
        """A range chunk's payload, or :data:`STORED` (the master loads the items)."""
        if self.listed is not None:
            return STORED
        part = self.chunk_range(index)
        if part.step == 1:
            return ("range", part.start, part.stop)
        return ("range", part.start, part.stop, part.step)

    def chunk_range(self, index: int) -> range:
        """The items of chunk ``index`` of a range job (ValueError for an item-list job)."""
        if self.listed is not None:
            raise ValueError(f"job {self.id} is an item-list job: its items are in the journal")
        lo, hi = self.bounds(index)
        return self.item_range[lo:hi]

    def lease(self, index: int) -> Lease:
        """What a worker gets to run chunk ``index``."""
        return Lease(
            self.id,
            index,
            self.job,
            self.payload(index),
            float(self.item_timeout or 0.0),
            self.on_error,
        )

    def as_wire(self) -> SpecWire:
        return SpecWire(
            id=self.id,
            job=self.job,
            chunk_size=self.chunk_size,
            start=self.start,
            stop=self.stop,
            step=self.step,
            listed=self.listed,
            created=self.created,
            options=self.options,
            code_version=self.code_version,
        )

    @classmethod
    def from_wire(cls, w: SpecWire) -> JobSpec:
        opts = w["options"]
        return cls(
            w["id"],
            w["job"],
            w["chunk_size"],
            w["start"],
            w["stop"],
            w["listed"],
            w["created"],
            w["step"],
            opts["retries"],
            opts["on_error"],
            opts["item_timeout"],
            w.get("code_version", ""),
        )


@dataclass
class _Hold:
    """Who holds a leased chunk, and until when (the wire's :class:`Lease` is what they got)."""

    worker: str
    deadline: float


@dataclass
class WorkerInfo:
    name: str
    host: str
    last_seen: float
    processes: int = 0
    chunks_done: int = 0
    items_done: int = 0
    gone: bool = False
    job_packages: dict[str, str] = field(default_factory=dict)  # reported at hello


class BoardView(TypedDict):
    """The board's part of ``status``; the master adds its own."""

    workers: list[WorkerView]
    jobs: list[JobView]
    not_listed: int  # finished jobs left out of ``jobs``
    by_state: dict[str, int]  # every job on the board (listed or not) by its state


@dataclass
class CompleteOutcome:
    """What :meth:`Board.complete` decided; the master journals it."""

    #: chunks whose results are now done (journal them), failed items included (skip)
    accepted: list[ChunkId] = field(default_factory=list)
    duplicates: int = 0
    #: jobs that became done
    finished_jobs: list[str] = field(default_factory=list)
    #: failed attempts: chunk -> attempt number (1 = the first run)
    attempts: dict[ChunkId, int] = field(default_factory=dict)
    #: failed chunks that go back to pending for another attempt
    retried: list[ChunkId] = field(default_factory=list)
    #: accepted chunks with failed items (on_error="skip"): chunk -> items failed
    skipped: dict[ChunkId, int] = field(default_factory=dict)
    #: jobs that failed now (on_error="fail"), with the chunk that decided it
    failed_jobs: dict[str, ChunkId] = field(default_factory=dict)


@dataclass
class ReapReport:
    requeued: dict[str, int] = field(default_factory=dict)  # worker -> chunks back to pending
    gone: list[str] = field(default_factory=list)  # workers silent longer than the lease timeout


class _JobState:
    """Chunk bookkeeping of one job. Not locked: the Board holds the lock.

    A chunk is done (its bit in ``done_bits``), leased (in ``leased``) or
    pending. Pending chunks are not listed: they are every chunk at or after
    ``cursor`` that is neither done nor leased, plus the ``requeued`` set
    (chunks before the cursor that came back). ``done_ahead`` and
    ``leased_ahead`` count the done and leased chunks at or after the cursor,
    so :attr:`pending` is exact without a scan. :meth:`check` verifies all of
    it by brute force.
    """

    def __init__(
        self, spec: JobSpec, done: Iterable[int], all_done: bool = False, held: bool = True
    ) -> None:
        self.spec = spec
        #: number of chunks of the job; 0 for a job that is not held (a journal entry the
        #: master could not load: it is listed, failed, and has no chunk to track)
        self.n_chunks = spec.n_chunks if held else 0
        #: one bit per chunk: set when its results are accepted
        self.done_bits = bytearray((self.n_chunks + 7) // 8)
        #: chunks done / items in them
        self.n_done = 0
        self.items_done = 0
        if all_done:  # a finished job from the journal: no need to list its chunks
            self.done_bits = bytearray(b"\xff" * len(self.done_bits))
            if self.n_chunks % 8:
                self.done_bits[-1] = (1 << (self.n_chunks % 8)) - 1
            self.n_done, self.items_done = self.n_chunks, spec.n_items
        for index in done:
            if 0 <= index < self.n_chunks and not self.is_done(index):
                self._set(index)
        #: first chunk never handed out by this board (chunks from here on are
        #: handed out in order)
        self.cursor = 0
        #: done / leased chunks at or after the cursor
        self.done_ahead = self.n_done
        self.leased_ahead = 0
        #: pending chunks before the cursor, oldest first (an ordered set)
        self.requeued: dict[int, None] = {}
        #: chunk index -> who holds it
        self.leased: dict[int, _Hold] = {}
        #: results dropped because the chunk was already done
        self.duplicates = 0
        self.state = JobState.DONE if self.n_done == self.n_chunks else JobState.RUNNING
        self.error: str | None = None
        #: items that failed for good: in done chunks (on_error="skip"), or in the chunk
        #: that failed the job
        self.items_failed = 0
        #: failed attempts per chunk, the workers that failed it, and when it last failed
        #: (board clock); only chunks that failed and are not done are listed
        self.attempts: dict[int, int] = {}
        self.failed_by: dict[int, set[str]] = {}
        self.failed_at: dict[int, float] = {}
        #: a chunk was handed out (or is done): the job is running, not pending
        self.started = self.n_done > 0
        #: wall-clock time it reached done, failed or cancelled
        self.finished: float | None = None

    def is_done(self, index: int) -> bool:
        return bool(self.done_bits[index >> 3] & (1 << (index & 7)))

    def _set(self, index: int) -> None:
        self.done_bits[index >> 3] |= 1 << (index & 7)
        self.n_done += 1
        self.items_done += self.spec.chunk_len(index)

    def _clear(self, index: int) -> None:
        self.done_bits[index >> 3] &= ~(1 << (index & 7)) & 0xFF
        self.n_done -= 1
        self.items_done -= self.spec.chunk_len(index)

    @property
    def pending(self) -> int:
        if self.state != JobState.RUNNING:
            return 0
        return (
            len(self.requeued) + self.n_chunks - self.cursor - self.done_ahead - self.leased_ahead
        )

    def take(self, k: int, avoid: Callable[[int], bool] | None = None) -> list[int]:
        """Up to ``k`` pending chunks, requeued ones first; ``avoid(index)`` skips a
        requeued chunk for now (it failed on this worker and another one can run it)."""
        out: list[int] = []
        if avoid is not None and self.failed_by and self.requeued:
            for index in list(self.requeued):
                if len(out) >= k:
                    break
                if not avoid(index):
                    del self.requeued[index]
                    out.append(index)
        else:
            while self.requeued and len(out) < k:
                index = next(iter(self.requeued))
                del self.requeued[index]
                out.append(index)
        while len(out) < k and self.cursor < self.n_chunks:
            index = self.cursor
            self.cursor += 1
            if self.is_done(index):
                self.done_ahead -= 1
            elif index in self.leased:  # adopted by a heartbeat after a restart
                self.leased_ahead -= 1
            else:
                out.append(index)
        if out:
            self.started = True
        return out

    def drop_lease(self, index: int) -> None:
        """Forget a lease and make the chunk pending again."""
        del self.leased[index]
        if index >= self.cursor:
            self.leased_ahead -= 1  # the cursor will hand it out
        else:
            self.requeued[index] = None

    def adopt(self, index: int, hold: _Hold) -> None:
        """Lease a chunk that is pending but not taken through take() (a heartbeat names it)."""
        if index >= self.cursor:
            self.leased_ahead += 1
        else:
            del self.requeued[index]
        self.leased[index] = hold
        self.started = True

    def is_pending(self, index: int) -> bool:
        if self.is_done(index) or index in self.leased:
            return False
        return index >= self.cursor or index in self.requeued

    def mark_done(self, index: int) -> None:
        if index in self.leased:
            del self.leased[index]
            if index >= self.cursor:
                self.leased_ahead -= 1
                self.done_ahead += 1
        elif index in self.requeued:
            del self.requeued[index]
        elif index >= self.cursor:
            self.done_ahead += 1
        self._set(index)
        self.started = True
        self.attempts.pop(index, None)
        self.failed_by.pop(index, None)
        self.failed_at.pop(index, None)
        if self.n_done == self.n_chunks and self.state == JobState.RUNNING:
            self.state = JobState.DONE

    def stop(self, state: JobState) -> None:
        """Fail or cancel: nothing pending, nothing leased."""
        self.state = state
        self.leased.clear()
        self.requeued.clear()
        self.attempts.clear()
        self.failed_by.clear()
        self.failed_at.clear()

    @property
    def view_state(self) -> JobState:
        """``pending`` until a chunk was handed out; the stored state otherwise."""
        if self.state == JobState.RUNNING and not self.started:
            return JobState.PENDING
        return self.state

    def unmark_done(self, index: int) -> None:
        self._clear(index)
        if index >= self.cursor:
            self.done_ahead -= 1
        else:
            self.requeued[index] = None
        if self.state == JobState.DONE:
            self.state = JobState.RUNNING

    def check(self) -> None:
        """Recompute every counter by brute force; raise AssertionError on a mismatch."""
        done = [i for i in range(self.n_chunks) if self.is_done(i)]
        problems = []
        if len(done) != self.n_done:
            problems.append(f"n_done {self.n_done} != {len(done)} bits set")
        items = sum(self.spec.chunk_len(i) for i in done)
        if self.n_chunks != self.spec.n_chunks and self.state != JobState.FAILED:
            problems.append(f"a job that is not held is {self.state}, not failed")
        if items != self.items_done:
            problems.append(f"items_done {self.items_done} != {items}")
        if not 0 <= self.cursor <= self.n_chunks:
            problems.append(f"cursor {self.cursor} outside 0..{self.n_chunks}")
        ahead_done = sum(1 for i in done if i >= self.cursor)
        if ahead_done != self.done_ahead:
            problems.append(f"done_ahead {self.done_ahead} != {ahead_done}")
        ahead_leased = sum(1 for i in self.leased if i >= self.cursor)
        if ahead_leased != self.leased_ahead:
            problems.append(f"leased_ahead {self.leased_ahead} != {ahead_leased}")
        if self.state == JobState.RUNNING:
            leased_and_done = [i for i in self.leased if self.is_done(i)]
            if leased_and_done:
                problems.append(f"chunks both leased and done: {leased_and_done[:5]}")
            bad_requeued = [
                i for i in self.requeued if i >= self.cursor or self.is_done(i) or i in self.leased
            ]
            if bad_requeued:
                problems.append(
                    f"requeued chunks not pending before the cursor: {bad_requeued[:5]}"
                )
            pending = sum(
                1
                for i in range(self.n_chunks)
                if not self.is_done(i)
                and i not in self.leased
                and (i >= self.cursor or i in self.requeued)
            )
            lost = [
                i
                for i in range(self.cursor)
                if not self.is_done(i) and i not in self.leased and i not in self.requeued
            ]
            if lost:
                problems.append(f"chunks neither done, leased nor pending: {lost[:5]}")
            if pending != self.pending:
                problems.append(f"pending {self.pending} != {pending}")
            if self.n_done == self.n_chunks:
                problems.append("every chunk is done but the job is running")
        elif self.state == JobState.DONE and self.n_done != self.n_chunks:
            problems.append(f"state done with {self.n_done}/{self.n_chunks} chunks")
        if self.state != JobState.RUNNING and (self.leased or self.requeued or self.attempts):
            problems.append(f"{self.state} job still has leases, requeued chunks or attempts")
        most = self.items_done + (self.spec.chunk_size if self.state == JobState.FAILED else 0)
        if not 0 <= self.items_failed <= most:
            problems.append(f"items_failed {self.items_failed} outside 0..{most}")
        tracked = set(self.attempts)
        if tracked != set(self.failed_by) or tracked != set(self.failed_at):
            problems.append("attempts, failed_by and failed_at name different chunks")
        bad_attempts = [i for i, n in self.attempts.items() if self.is_done(i) or n < 1]
        if bad_attempts:
            problems.append(f"attempts of done chunks or below 1: {bad_attempts[:5]}")
        if (self.n_done or self.leased) and not self.started:
            problems.append("chunks were handed out but the job is not started")
        if (self.state == JobState.RUNNING) == (self.finished is not None):
            problems.append(f"state {self.state} with finished={self.finished}")
        if problems:
            raise AssertionError(f"job {self.spec.id}: " + "; ".join(problems))


class Board:
    """Thread-safe job/chunk/lease state. See the module docstring."""

    def __init__(
        self,
        lease_timeout: float = defaults.LEASE_TIMEOUT,
        clock: Callable[[], float] = time.monotonic,
        wall: Callable[[], float] = time.time,
    ) -> None:
        if lease_timeout <= 0:
            raise ValueError("lease_timeout must be positive")
        self.lease_timeout = lease_timeout
        self._clock = clock
        self._wall = wall  # wall-clock time of finishes (shown to people, journaled)
        self._lock = threading.Lock()
        self._work = threading.Condition(self._lock)  # notified when chunks become pending
        self._jobs: dict[str, _JobState] = {}  # every job, in submission order
        self._active: dict[str, _JobState] = {}  # the running ones, in submission order
        self._workers: dict[str, WorkerInfo] = {}

    # -- jobs -------------------------------------------------------------

    def add_job(
        self,
        spec: JobSpec,
        done: Iterable[int] = (),
        duplicates: int = 0,
        state: JobState | None = None,
        error: str | None = None,
        *,
        items_failed: int = 0,
        finished: float | None = None,
        attempts: Mapping[int, tuple[int, Iterable[str]]] | None = None,
        held: bool = True,
    ) -> None:
        """Add a job (``done``: chunk indices already completed, e.g. from the journal).

        A job journaled as done needs no ``done`` list. ``attempts`` (chunk ->
        (failed attempts, workers that failed it)) resumes the retry count of a
        running job. ``held=False`` lists a journal entry the master could not load:
        it must be failed, and nothing of it is tracked (no chunk bits at all, so a
        job too large to hold can still be shown with its reason).
        """
        if not held and state != JobState.FAILED:
            raise ValueError("only a failed job can be listed without holding its chunks")
        job = _JobState(spec, done, all_done=state == JobState.DONE, held=held)
        job.duplicates = duplicates
        job.items_failed = items_failed
        if state in (JobState.FAILED, JobState.CANCELLED):
            job.stop(state)
            job.error = error
        if job.state != JobState.RUNNING:
            job.finished = finished if finished is not None else spec.created
        elif attempts:
            now = self._clock()
            for index, (count, workers) in attempts.items():
                if 0 <= index < job.n_chunks and not job.is_done(index) and count > 0:
                    job.attempts[index] = count
                    job.failed_by[index] = set(workers)
                    job.failed_at[index] = now
        with self._lock:
            if spec.id in self._jobs:
                raise ValueError(f"job {spec.id} already exists")
            self._jobs[spec.id] = job
            if job.state == JobState.RUNNING:
                self._active[spec.id] = job
            self._work.notify_all()

    def has_job(self, job_id: str) -> bool:
        with self._lock:
            return job_id in self._jobs

    def spec(self, job_id: str) -> JobSpec:
        with self._lock:
            return self._jobs[job_id].spec

    def _settle(self, job: _JobState) -> None:
        """Keep ``_active`` and ``finished`` in step with a job's state (lock held)."""
        if job.state == JobState.RUNNING:
            if job.spec.id not in self._active:
                # Back to running (an undone completion): keep submission order.
                self._active = {k: j for k, j in self._jobs.items() if j.state == JobState.RUNNING}
            job.finished = None
        else:
            self._active.pop(job.spec.id, None)
            if job.finished is None:
                job.finished = self._wall()

    def fail_job(self, job_id: str, error: str) -> bool:
        """Mark a running job failed; its chunks are no longer leased."""
        return self._stop_job(job_id, JobState.FAILED, error)

    def cancel_job(self, job_id: str) -> bool:
        """Cancel a running job: nothing more is handed out, later results are dropped,
        and workers holding its chunks are told to stop them. False: it had finished."""
        return self._stop_job(job_id, JobState.CANCELLED, None)

    def _stop_job(self, job_id: str, state: JobState, error: str | None) -> bool:
        with self._lock:
            job = self._jobs.get(job_id)
            if job is None or job.state != JobState.RUNNING:
                return False
            job.stop(state)
            job.error = error
            self._settle(job)
            return True

    def set_error(self, job_id: str, error: str) -> None:
        """Replace a failed job's error summary (the master words it)."""
        with self._lock:
            job = self._jobs.get(job_id)
            if job is not None and job.state == JobState.FAILED:
                job.error = error

    def remove_job(self, job_id: str) -> bool:
        """Forget a finished job (retention); a running job is never removed."""
        with self._lock:
            job = self._jobs.get(job_id)
            if job is None or job.state == JobState.RUNNING:
                return False
            del self._jobs[job_id]
            return True

    def finished_jobs(self) -> list[tuple[str, float]]:
        """(job id, wall-clock finish time) of every finished job, oldest finish first."""
        with self._lock:
            out = [
                (j.spec.id, j.finished)
                for j in self._jobs.values()
                if j.finished is not None and j.state != JobState.RUNNING
            ]
        return sorted(out, key=lambda t: t[1])

    def is_chunk_done(self, job_id: str, index: int) -> bool:
        with self._lock:
            job = self._jobs[job_id]
            return 0 <= index < job.n_chunks and job.is_done(index)

    # -- workers ----------------------------------------------------------

    def note_seen(
        self,
        worker: str,
        host: str = "",
        processes: int = 0,
        job_packages: Mapping[str, str] | None = None,
    ) -> bool:
        """Record that a worker spoke; return True when it joined (is new or came back).

        ``job_packages`` (said at hello) replaces what the worker reported before.
        """
        with self._lock:
            joined = self._note_seen(worker, host, processes)
            if job_packages is not None:
                self._workers[worker].job_packages = dict(job_packages)
            return joined

    def _note_seen(self, worker: str, host: str = "", processes: int = 0) -> bool:
        now = self._clock()
        info = self._workers.get(worker)
        if info is None:
            self._workers[worker] = WorkerInfo(worker, host or worker, now, processes)
            return True
        info.last_seen = now
        if host:
            info.host = host
        if processes:
            info.processes = processes
        if info.gone:
            info.gone = False
            return True
        return False

    def forget_worker(self, worker: str) -> None:
        """A worker said goodbye: it is no longer listed."""
        with self._lock:
            info = self._workers.get(worker)
            if info is not None:
                info.gone = True

    def _connected(self, now: float) -> set[str]:
        return {
            w.name
            for w in self._workers.values()
            if not w.gone and now - w.last_seen <= self.lease_timeout
        }

    # -- leases -----------------------------------------------------------

    def lease(self, worker: str, n: int, wait: float = 0.0) -> list[Lease]:
        """Hand ``worker`` up to ``n`` pending chunks, oldest job first.

        With ``wait`` > 0 and nothing pending, block up to ``wait`` seconds
        (real time) for work to arrive: idle workers wake the moment a job is
        submitted instead of polling.
        """
        deadline = time.monotonic() + wait
        with self._lock:
            while True:
                self._note_seen(worker)
                out = self._take(worker, n)
                remaining = deadline - time.monotonic()
                if out or remaining <= 0:
                    return out
                self._work.wait(remaining)

    def _take(self, worker: str, n: int) -> list[Lease]:
        out: list[Lease] = []
        now = self._clock()
        expires = now + self.lease_timeout
        connected: set[str] | None = None
        for job in self._active.values():
            if len(out) >= n:
                break
            avoid = None
            if job.failed_by:
                if connected is None:
                    connected = self._connected(now)
                avoid = self._avoider(job, worker, now, connected)
            for index in job.take(n - len(out), avoid):
                job.leased[index] = _Hold(worker, expires)
                out.append(job.spec.lease(index))
        return out

    def _avoider(
        self, job: _JobState, worker: str, now: float, connected: set[str]
    ) -> Callable[[int], bool]:
        """Whether ``worker`` should leave a failed chunk to another connected worker:
        it failed there, another worker that has not failed it is connected, and the
        failure is recent (within a lease timeout, so a busy fleet cannot starve it)."""

        def avoid(index: int) -> bool:
            failed_by = job.failed_by.get(index)
            if not failed_by or worker not in failed_by:
                return False
            if now - job.failed_at.get(index, now) > self.lease_timeout:
                return False
            return any(w not in failed_by for w in connected)

        return avoid

    def heartbeat(self, worker: str, held: Iterable[ChunkId] = (), host: str = "") -> list[ChunkId]:
        """Extend the leases of the chunks ``worker`` still holds; return those to stop.

        A held chunk that is pending again (lease expired, or the master
        restarted and forgot its leases) is re-leased to the worker rather
        than run twice. Leases the worker does not mention are not extended:
        they expire, e.g. when a lease reply was lost with its connection.
        A held chunk of a job that is no longer running (cancelled, failed,
        pruned) or that another worker already finished is returned: the
        worker stops it.
        """
        stop: list[ChunkId] = []
        with self._lock:
            self._note_seen(worker, host)
            expires = self._clock() + self.lease_timeout
            for job_id, index in held:
                job = self._jobs.get(job_id)
                if job is None or job.state != JobState.RUNNING:
                    stop.append(ChunkId(job_id, index))
                    continue
                if not 0 <= index < job.n_chunks:
                    continue
                if job.is_done(index):
                    stop.append(ChunkId(job_id, index))
                    continue
                hold = job.leased.get(index)
                if hold is not None:
                    if hold.worker == worker:
                        hold.deadline = expires
                elif job.is_pending(index):
                    job.adopt(index, _Hold(worker, expires))
        return stop

    def to_stop(self, held: Iterable[ChunkId]) -> list[ChunkId]:
        """The chunks among ``held`` a worker should stop (see :meth:`heartbeat`)."""
        with self._lock:
            out = []
            for job_id, index in held:
                job = self._jobs.get(job_id)
                if (
                    job is None
                    or job.state != JobState.RUNNING
                    or (0 <= index < job.n_chunks and job.is_done(index))
                ):
                    out.append(ChunkId(job_id, index))
            return out

    def release(self, worker: str, chunks: Iterable[ChunkId]) -> int:
        """Give chunks back (a draining worker); return how many went back to pending."""
        count = 0
        with self._lock:
            for job_id, index in chunks:
                job = self._jobs.get(job_id)
                if job is None:
                    continue
                hold = job.leased.get(index)
                if hold is not None and hold.worker == worker:
                    job.drop_lease(index)
                    count += 1
            if count:
                self._work.notify_all()
        return count

    def reap(self) -> ReapReport:
        """Return expired leases to pending; report workers gone silent."""
        report = ReapReport()
        with self._lock:
            now = self._clock()
            for job in self._active.values():
                expired = [i for i, hold in job.leased.items() if hold.deadline < now]
                for index in expired:
                    worker = job.leased[index].worker
                    job.drop_lease(index)
                    report.requeued[worker] = report.requeued.get(worker, 0) + 1
            for info in self._workers.values():
                if not info.gone and now - info.last_seen > self.lease_timeout:
                    info.gone = True
                    report.gone.append(info.name)
            if report.requeued:
                self._work.notify_all()
        return report

    # -- completion -------------------------------------------------------

    def complete(
        self,
        worker: str,
        chunks: Iterable[ChunkId],
        host: str = "",
        failed: Mapping[ChunkId, int] | None = None,
        errors: Mapping[ChunkId, str] | None = None,
    ) -> CompleteOutcome:
        """Accept each chunk once; a chunk with ``failed`` items is a failed attempt.

        Unknown or already-done chunks, and chunks of a job that is no longer
        running, count as duplicates; so does a failed attempt reported by a
        worker that does not hold the chunk's lease (a report resent after a
        lost reply must not spend a second retry). A failed attempt is retried up to the
        job's ``retries``; after that ``on_error="skip"`` accepts the chunk
        (its failed items counted) and ``"fail"`` fails the job with
        ``errors[chunk]`` as its error. The caller journals ``accepted`` before
        acknowledging; if that fails it calls :meth:`undo_complete` so the
        chunks run again.
        """
        failed = failed or {}
        errors = errors or {}
        outcome = CompleteOutcome()
        with self._lock:
            self._note_seen(worker, host)
            info = self._workers[worker]
            now = self._clock()
            for cid in chunks:
                job_id, index = cid
                cid = ChunkId(job_id, index)
                job = self._jobs.get(job_id)
                if (
                    job is None
                    or not 0 <= index < job.n_chunks
                    or job.is_done(index)
                    or job.state != JobState.RUNNING
                ):
                    if job is not None:
                        job.duplicates += 1
                    outcome.duplicates += 1
                    continue
                bad = failed.get(cid, 0)
                if bad:
                    hold = job.leased.get(index)
                    if hold is None or hold.worker != worker:
                        # Not this worker's lease (any more): a resent report after a lost
                        # reply, or a lease that expired and went elsewhere. Counting it
                        # would spend a retry twice; the chunk runs (or ran) again anyway.
                        job.duplicates += 1
                        outcome.duplicates += 1
                        continue
                    attempt = job.attempts.get(index, 0) + 1
                    outcome.attempts[cid] = attempt
                    if attempt <= job.spec.retries:
                        job.attempts[index] = attempt
                        job.failed_by.setdefault(index, set()).add(worker)
                        job.failed_at[index] = now
                        job.drop_lease(index)
                        outcome.retried.append(cid)
                        self._work.notify_all()
                        continue
                    if job.spec.on_error != OnError.SKIP:
                        job.items_failed += bad
                        job.stop(JobState.FAILED)
                        job.error = errors.get(cid, f"chunk {index} failed")
                        self._settle(job)
                        outcome.failed_jobs[job_id] = cid
                        continue
                    job.items_failed += bad
                    outcome.skipped[cid] = bad
                job.mark_done(index)
                outcome.accepted.append(cid)
                info.chunks_done += 1
                info.items_done += job.spec.chunk_len(index)
                if job.n_done == job.n_chunks:  # mark_done made it done
                    self._settle(job)
                    outcome.finished_jobs.append(job_id)
        return outcome

    def undo_complete(
        self, worker: str, chunks: Iterable[ChunkId], failed: Mapping[ChunkId, int] | None = None
    ) -> None:
        """Take back accepted chunks (their journal write failed): they run again."""
        failed = failed or {}
        with self._lock:
            info = self._workers.get(worker)
            for job_id, index in chunks:
                job = self._jobs[job_id]
                if job.is_done(index):
                    job.unmark_done(index)
                    job.items_failed -= failed.get(ChunkId(job_id, index), 0)
                    self._settle(job)
                    if info is not None:
                        info.chunks_done -= 1
                        info.items_done -= job.spec.chunk_len(index)
            self._work.notify_all()

    # -- views ------------------------------------------------------------

    def job_status(self, job_id: str) -> JobView:
        with self._lock:
            return self._job_view(self._jobs[job_id])

    @staticmethod
    def _job_view(job: _JobState) -> JobView:
        spec = job.spec
        view = JobView(
            id=spec.id,
            job=spec.job,
            state=job.view_state.value,
            chunks={"pending": job.pending, "leased": len(job.leased), "done": job.n_done},
            items_total=spec.n_items,
            items_done=job.items_done,
            duplicates=job.duplicates,
            items_failed=job.items_failed,
            created=spec.created,
            finished=job.finished,
            retries=spec.retries,
            on_error=spec.on_error,
            item_timeout=spec.item_timeout,
            code_version=spec.code_version,
        )
        if job.error:
            view["error"] = job.error
        return view

    def jobs(self, limit: int) -> JobList:
        """The newest ``limit`` jobs first, and how many there are."""
        with self._lock:
            newest = islice(reversed(self._jobs.values()), max(0, limit))
            return JobList(jobs=[self._job_view(j) for j in newest], total=len(self._jobs))

    def check(self) -> None:
        """Check every job's invariants (see :meth:`_JobState.check`); for tests."""
        with self._lock:
            for job in self._jobs.values():
                job.check()
            running = [k for k, j in self._jobs.items() if j.state == JobState.RUNNING]
            if list(self._active) != running:
                raise AssertionError(
                    f"active jobs {list(self._active)[:5]} != running jobs {running[:5]}"
                )

    def status(self, finished_limit: int | None = None) -> BoardView:
        """Workers seen within the lease timeout, and the jobs: every running one and
        the newest ``finished_limit`` finished ones (None: all), in submission order."""
        with self._lock:
            now = self._clock()
            leased: dict[str, int] = {}
            for job in self._active.values():
                for hold in job.leased.values():
                    leased[hold.worker] = leased.get(hold.worker, 0) + 1
            workers = [
                WorkerView(
                    name=w.name,
                    host=w.host,
                    last_heartbeat_age_s=round(now - w.last_seen, 3),
                    chunks_done=w.chunks_done,
                    items_done=w.items_done,
                    leased=leased.get(w.name, 0),
                    job_packages=dict(w.job_packages),
                )
                for w in self._workers.values()
                if not w.gone and now - w.last_seen <= self.lease_timeout
            ]
            shown: list[_JobState] = []
            finished_shown = 0
            by_state = dict.fromkeys((s.value for s in JobState), 0)
            for job in reversed(self._jobs.values()):
                by_state[job.view_state.value] += 1
                if job.state == JobState.RUNNING:
                    shown.append(job)
                elif finished_limit is None or finished_shown < finished_limit:
                    shown.append(job)
                    finished_shown += 1
            return BoardView(
                workers=workers,
                jobs=[self._job_view(j) for j in reversed(shown)],
                not_listed=len(self._jobs) - len(shown),
                by_state=by_state,
            )

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
chunks of 1,000 costs about 12 KB here.

The clock is injectable (tests drive time by hand); nothing here touches the
disk or the network — the master journals around it. The one deliberate
exception is :meth:`Board.lease` with ``wait`` > 0: an idle worker's long-poll
blocks on a condition in real time, so it wakes the moment work arrives.

State is changed only through the Board's methods, each under one lock; the
per-job counters are correlated (see :class:`_JobState`) and
:meth:`Board.check` recomputes them by brute force (the tests call it after
every scenario).
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field
from typing import Any, TypedDict

from taskfleet import defaults
from taskfleet.protocol import (
    ChunkId,
    JobState,
    JobView,
    Lease,
    Payload,
    SpecWire,
    WorkerView,
)


@dataclass(frozen=True)
class JobSpec:
    """What was submitted. ``items is None`` means the range ``[start, stop)``."""

    id: str
    job: str
    chunk_size: int
    start: int = 0
    stop: int = 0
    items: Sequence[Any] | None = None
    created: float = 0.0

    @property
    def n_items(self) -> int:
        return len(self.items) if self.items is not None else max(0, self.stop - self.start)

    @property
    def n_chunks(self) -> int:
        return -(-self.n_items // self.chunk_size)

    def bounds(self, index: int) -> tuple[int, int]:
        """Item positions [lo, hi) of chunk ``index`` (0-based, within the job)."""
        lo = index * self.chunk_size
        return lo, min(lo + self.chunk_size, self.n_items)

    def chunk_len(self, index: int) -> int:
        lo, hi = self.bounds(index)
        return hi - lo

    def payload(self, index: int) -> Payload:
        lo, hi = self.bounds(index)
        if self.items is None:
            return ("range", self.start + lo, self.start + hi)
        return ("items", list(self.items[lo:hi]))

    def chunk_items(self, index: int) -> Sequence[Any]:
        lo, hi = self.bounds(index)
        if self.items is None:
            return range(self.start + lo, self.start + hi)
        return self.items[lo:hi]

    def as_wire(self) -> SpecWire:
        items = None if self.items is None else list(self.items)
        return SpecWire(
            id=self.id,
            job=self.job,
            chunk_size=self.chunk_size,
            start=self.start,
            stop=self.stop,
            items=items,
            created=self.created,
        )

    @classmethod
    def from_wire(cls, w: SpecWire) -> JobSpec:
        return cls(
            w["id"], w["job"], w["chunk_size"], w["start"], w["stop"], w["items"], w["created"]
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


class BoardView(TypedDict):
    """The board's part of ``status``; the master adds its own."""

    workers: list[WorkerView]
    jobs: list[JobView]


@dataclass
class CompleteOutcome:
    accepted: list[ChunkId] = field(default_factory=list)
    duplicates: int = 0
    finished_jobs: list[str] = field(default_factory=list)


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

    def __init__(self, spec: JobSpec, done: Iterable[int]) -> None:
        self.spec = spec
        #: number of chunks of the job
        self.n_chunks = spec.n_chunks
        #: one bit per chunk: set when its results are accepted
        self.done_bits = bytearray((self.n_chunks + 7) // 8)
        #: chunks done / items in them
        self.n_done = 0
        self.items_done = 0
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

    def take(self, k: int) -> list[int]:
        out: list[int] = []
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
        if self.n_done == self.n_chunks and self.state == JobState.RUNNING:
            self.state = JobState.DONE

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
        if problems:
            raise AssertionError(f"job {self.spec.id}: " + "; ".join(problems))


class Board:
    """Thread-safe job/chunk/lease state. See the module docstring."""

    def __init__(
        self,
        lease_timeout: float = defaults.LEASE_TIMEOUT,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        if lease_timeout <= 0:
            raise ValueError("lease_timeout must be positive")
        self.lease_timeout = lease_timeout
        self._clock = clock
        self._lock = threading.Lock()
        self._work = threading.Condition(self._lock)  # notified when chunks become pending
        self._jobs: dict[str, _JobState] = {}
        self._workers: dict[str, WorkerInfo] = {}

    # -- jobs -------------------------------------------------------------

    def add_job(
        self,
        spec: JobSpec,
        done: Iterable[int] = (),
        duplicates: int = 0,
        state: JobState | None = None,
        error: str | None = None,
    ) -> None:
        """Add a job (``done``: chunk indices already completed, e.g. from the journal)."""
        job = _JobState(spec, done)
        job.duplicates = duplicates
        if state == JobState.FAILED:
            job.state, job.error = JobState.FAILED, error
        with self._lock:
            if spec.id in self._jobs:
                raise ValueError(f"job {spec.id} already exists")
            self._jobs[spec.id] = job
            self._work.notify_all()

    def has_job(self, job_id: str) -> bool:
        with self._lock:
            return job_id in self._jobs

    def spec(self, job_id: str) -> JobSpec:
        with self._lock:
            return self._jobs[job_id].spec

    def fail_job(self, job_id: str, error: str) -> bool:
        """Mark a job failed (a job function raised); its chunks are no longer leased."""
        with self._lock:
            job = self._jobs.get(job_id)
            if job is None or job.state != JobState.RUNNING:
                return False
            job.state, job.error = JobState.FAILED, error
            job.leased.clear()
            job.requeued.clear()
            return True

    # -- workers ----------------------------------------------------------

    def note_seen(self, worker: str, host: str = "", processes: int = 0) -> bool:
        """Record that a worker spoke; return True when it joined (is new or came back)."""
        with self._lock:
            return self._note_seen(worker, host, processes)

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
        expires = self._clock() + self.lease_timeout
        for job in self._jobs.values():
            if len(out) >= n:
                break
            if job.state != JobState.RUNNING:
                continue
            for index in job.take(n - len(out)):
                job.leased[index] = _Hold(worker, expires)
                out.append(Lease(job.spec.id, index, job.spec.job, job.spec.payload(index)))
        return out

    def heartbeat(self, worker: str, held: Iterable[ChunkId] = (), host: str = "") -> None:
        """Extend the leases of the chunks ``worker`` still holds.

        A held chunk that is pending again (lease expired, or the master
        restarted and forgot its leases) is re-leased to the worker rather
        than run twice. Leases the worker does not mention are not extended:
        they expire, e.g. when a lease reply was lost with its connection.
        """
        with self._lock:
            self._note_seen(worker, host)
            expires = self._clock() + self.lease_timeout
            for job_id, index in held:
                job = self._jobs.get(job_id)
                if job is None or job.state != JobState.RUNNING or not 0 <= index < job.n_chunks:
                    continue
                hold = job.leased.get(index)
                if hold is not None:
                    if hold.worker == worker:
                        hold.deadline = expires
                elif job.is_pending(index):
                    job.adopt(index, _Hold(worker, expires))

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
            for job in self._jobs.values():
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

    def complete(self, worker: str, chunks: Iterable[ChunkId], host: str = "") -> CompleteOutcome:
        """Accept each chunk once. Unknown or already-done chunks count as duplicates.

        The caller journals ``accepted`` before acknowledging; if that fails it
        calls :meth:`undo_complete` so the chunks run again.
        """
        outcome = CompleteOutcome()
        with self._lock:
            self._note_seen(worker, host)
            info = self._workers[worker]
            for job_id, index in chunks:
                job = self._jobs.get(job_id)
                if (
                    job is None
                    or not 0 <= index < job.n_chunks
                    or job.is_done(index)
                    or job.state == JobState.FAILED
                ):
                    if job is not None:
                        job.duplicates += 1
                    outcome.duplicates += 1
                    continue
                job.mark_done(index)
                outcome.accepted.append(ChunkId(job_id, index))
                info.chunks_done += 1
                info.items_done += job.spec.chunk_len(index)
                if job.state == JobState.DONE:
                    outcome.finished_jobs.append(job_id)
        return outcome

    def undo_complete(self, worker: str, chunks: Iterable[ChunkId]) -> None:
        with self._lock:
            info = self._workers.get(worker)
            for job_id, index in chunks:
                job = self._jobs[job_id]
                if job.is_done(index):
                    job.unmark_done(index)
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
        view = JobView(
            id=job.spec.id,
            job=job.spec.job,
            state=job.state.value,
            chunks={"pending": job.pending, "leased": len(job.leased), "done": job.n_done},
            items_total=job.spec.n_items,
            items_done=job.items_done,
            duplicates=job.duplicates,
        )
        if job.error:
            view["error"] = job.error
        return view

    def check(self) -> None:
        """Check every job's invariants (see :meth:`_JobState.check`); for tests."""
        with self._lock:
            for job in self._jobs.values():
                job.check()

    def status(self) -> BoardView:
        """Workers seen within the lease timeout and every job, as plain data."""
        with self._lock:
            now = self._clock()
            leased: dict[str, int] = {}
            for job in self._jobs.values():
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
                )
                for w in self._workers.values()
                if not w.gone and now - w.last_seen <= self.lease_timeout
            ]
            return BoardView(workers=workers, jobs=[self._job_view(j) for j in self._jobs.values()])

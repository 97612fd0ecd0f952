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
disk or the network — the master journals around it.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field
from typing import Any

ChunkId = tuple[str, int]
# What a worker receives per chunk: (job_id, index, job_name, payload), where
# payload is ("range", start, stop) or ("items", [item, ...]).
Lease = tuple[str, int, str, tuple[Any, ...]]


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

    def payload(self, index: int) -> tuple[Any, ...]:
        lo, hi = self.bounds(index)
        if self.items is None:
            return ("range", self.start + lo, self.start + hi)
        return ("items", list(self.items[lo:hi]))

    def chunk_items(self, index: int) -> Sequence[Any]:
        lo, hi = self.bounds(index)
        if self.items is None:
            return range(self.start + lo, self.start + hi)
        return self.items[lo:hi]


@dataclass
class _Lease:
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
    """Chunk bookkeeping of one job. Not locked: the Board holds the lock."""

    def __init__(self, spec: JobSpec, done: Iterable[int]) -> None:
        self.spec = spec
        self.n = spec.n_chunks
        self.bits = bytearray((self.n + 7) // 8)
        self.n_done = 0
        self.items_done = 0
        for index in done:
            if 0 <= index < self.n and not self.is_done(index):
                self._set(index)
        # Chunks at or after the cursor were never leased by this board; those
        # among them that are done / leased are counted so pending stays exact.
        self.cursor = 0
        self.done_ahead = self.n_done
        self.leased_ahead = 0
        self.requeued: dict[int, None] = {}  # an ordered set
        self.leased: dict[int, _Lease] = {}
        self.duplicates = 0
        self.state = "done" if self.n_done == self.n else "running"
        self.error: str | None = None

    def is_done(self, index: int) -> bool:
        return bool(self.bits[index >> 3] & (1 << (index & 7)))

    def _set(self, index: int) -> None:
        self.bits[index >> 3] |= 1 << (index & 7)
        self.n_done += 1
        self.items_done += self.spec.chunk_len(index)

    def _clear(self, index: int) -> None:
        self.bits[index >> 3] &= ~(1 << (index & 7)) & 0xFF
        self.n_done -= 1
        self.items_done -= self.spec.chunk_len(index)

    @property
    def pending(self) -> int:
        if self.state != "running":
            return 0
        return len(self.requeued) + self.n - self.cursor - self.done_ahead - self.leased_ahead

    def take(self, k: int) -> list[int]:
        out: list[int] = []
        while self.requeued and len(out) < k:
            index = next(iter(self.requeued))
            del self.requeued[index]
            out.append(index)
        while len(out) < k and self.cursor < self.n:
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

    def lease(self, index: int, lease: _Lease) -> None:
        """Lease a chunk that is pending but not taken through take()."""
        if index >= self.cursor:
            self.leased_ahead += 1
        else:
            del self.requeued[index]
        self.leased[index] = lease

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
        if self.n_done == self.n and self.state == "running":
            self.state = "done"

    def unmark_done(self, index: int) -> None:
        self._clear(index)
        if index >= self.cursor:
            self.done_ahead -= 1
        else:
            self.requeued[index] = None
        if self.state == "done":
            self.state = "running"


class Board:
    """Thread-safe job/chunk/lease state. See the module docstring."""

    def __init__(
        self, lease_timeout: float = 30.0, clock: Callable[[], float] = time.monotonic
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
        state: str | None = None,
        error: str | None = None,
    ) -> None:
        """Add a job (``done``: chunk indices already completed, e.g. from the journal)."""
        job = _JobState(spec, done)
        job.duplicates = duplicates
        if state == "failed":
            job.state, job.error = "failed", error
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
            if job is None or job.state != "running":
                return False
            job.state, job.error = "failed", error
            job.leased.clear()
            job.requeued.clear()
            return True

    # -- workers ----------------------------------------------------------

    def touch(self, worker: str, host: str = "", processes: int = 0) -> bool:
        """Record that a worker spoke; return True when it is new or came back."""
        with self._lock:
            return self._touch(worker, host, processes)

    def _touch(self, worker: str, host: str = "", processes: int = 0) -> bool:
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
                self._touch(worker)
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
            if job.state != "running":
                continue
            for index in job.take(n - len(out)):
                job.leased[index] = _Lease(worker, expires)
                out.append((job.spec.id, index, job.spec.job, job.spec.payload(index)))
        return out

    def heartbeat(self, worker: str, held: Iterable[ChunkId] = (), host: str = "") -> None:
        """Extend the leases of the chunks ``worker`` still holds.

        A held chunk that is pending again (lease expired, or the master
        restarted and forgot its leases) is re-leased to the worker rather
        than run twice. Leases the worker does not mention are not extended:
        they expire, e.g. when a lease reply was lost with its connection.
        """
        with self._lock:
            self._touch(worker, host)
            expires = self._clock() + self.lease_timeout
            for job_id, index in held:
                job = self._jobs.get(job_id)
                if job is None or job.state != "running" or not 0 <= index < job.n:
                    continue
                lease = job.leased.get(index)
                if lease is not None:
                    if lease.worker == worker:
                        lease.deadline = expires
                elif job.is_pending(index):
                    job.lease(index, _Lease(worker, expires))

    def release(self, worker: str, chunks: Iterable[ChunkId]) -> int:
        """Give chunks back (a draining worker); return how many went back to pending."""
        count = 0
        with self._lock:
            for job_id, index in chunks:
                job = self._jobs.get(job_id)
                if job is None:
                    continue
                lease = job.leased.get(index)
                if lease is not None and lease.worker == worker:
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
                expired = [i for i, lease in job.leased.items() if lease.deadline < now]
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
            self._touch(worker, host)
            info = self._workers[worker]
            for job_id, index in chunks:
                job = self._jobs.get(job_id)
                if (
                    job is None
                    or not 0 <= index < job.n
                    or job.is_done(index)
                    or job.state == "failed"
                ):
                    if job is not None:
                        job.duplicates += 1
                    outcome.duplicates += 1
                    continue
                job.mark_done(index)
                outcome.accepted.append((job_id, index))
                info.chunks_done += 1
                info.items_done += job.spec.chunk_len(index)
                if job.state == "done":
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

    def job_status(self, job_id: str) -> dict[str, Any]:
        with self._lock:
            return self._job_view(self._jobs[job_id])

    def duplicates(self, job_id: str) -> int:
        with self._lock:
            return self._jobs[job_id].duplicates

    @staticmethod
    def _job_view(job: _JobState) -> dict[str, Any]:
        view: dict[str, Any] = {
            "id": job.spec.id,
            "job": job.spec.job,
            "state": job.state,
            "chunks": {"pending": job.pending, "leased": len(job.leased), "done": job.n_done},
            "items_total": job.spec.n_items,
            "items_done": job.items_done,
            "duplicates": job.duplicates,
        }
        if job.error:
            view["error"] = job.error
        return view

    def status(self) -> dict[str, Any]:
        """Workers seen within the lease timeout and every job, as plain data."""
        with self._lock:
            now = self._clock()
            leased: dict[str, int] = {}
            for job in self._jobs.values():
                for lease in job.leased.values():
                    leased[lease.worker] = leased.get(lease.worker, 0) + 1
            workers = [
                {
                    "name": w.name,
                    "host": w.host,
                    "last_heartbeat_age_s": round(now - w.last_seen, 3),
                    "chunks_done": w.chunks_done,
                    "items_done": w.items_done,
                    "leased": leased.get(w.name, 0),
                }
                for w in self._workers.values()
                if not w.gone and now - w.last_seen <= self.lease_timeout
            ]
            return {"workers": workers, "jobs": [self._job_view(j) for j in self._jobs.values()]}

    def worker_host(self, worker: str) -> str:
        with self._lock:
            info = self._workers.get(worker)
            return info.host if info else worker

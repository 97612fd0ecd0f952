"""What the master knows about itself, and a sampler that turns its status into rates.

* :func:`process_view` and :func:`journal_view`: the master process's memory
  and CPU time, the journal's size and its disk (read from ``/proc`` and
  ``statvfs``, cheap enough for every ``status`` call).
* :class:`Counters`: the master's own event counters (lease expiries, failed
  chunk attempts, retries) that the board does not keep.
* :class:`Observer`: samples the board service's ``status()`` once a second on
  its own thread and keeps what the HTTP server serves: the latest status,
  items/s per worker and per job (with an ETA), a throughput history for the
  dashboard's chart, and totals that only grow (items done, duplicates dropped,
  items failed) derived from the jobs' own counts. HTTP requests read the last
  snapshot and never touch the board, so a flood of requests cannot slow the
  workers down.

Lifecycle: ``Observer.start()`` takes a first sample (the baseline: jobs resumed
from the journal do not count as done since the start) and starts the thread;
``stop()`` ends it.
"""

from __future__ import annotations

import logging
import os
import resource
import threading
import time
from collections import deque
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any

from taskfleet import defaults
from taskfleet.protocol import JournalView, ProcessView, StatusView

_PAGE = os.sysconf("SC_PAGE_SIZE") if hasattr(os, "sysconf") else 4096


def rss_bytes() -> int:
    """Resident memory of this process now (``/proc/self/statm``), else its peak."""
    try:
        with open("/proc/self/statm", encoding="ascii") as fh:
            return int(fh.read().split()[1]) * _PAGE
    except (OSError, ValueError, IndexError):
        return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024


def process_view() -> ProcessView:
    t = os.times()
    return ProcessView(rss_bytes=rss_bytes(), cpu_seconds=round(t.user + t.system, 3))


def open_fds() -> int | None:
    """Open file descriptors of this process (Linux), else None."""
    try:
        return len(os.listdir("/proc/self/fd"))
    except OSError:
        return None


def journal_view(path: str) -> JournalView:
    """The journal's size on disk (database, WAL and shared-memory file) and its disk."""
    size = 0
    for suffix in ("", "-wal", "-shm"):
        try:
            size += os.stat(path + suffix).st_size
        except OSError:
            pass
    try:
        st = os.statvfs(os.path.dirname(os.path.abspath(path)))
        free, total = st.f_bavail * st.f_frsize, st.f_blocks * st.f_frsize
    except OSError:
        free = total = 0
    return JournalView(path=path, bytes=size, disk_free_bytes=free, disk_size_bytes=total)


@dataclass
class Counters:
    """Events the master counts itself (thread-safe increments)."""

    lease_expiries: int = 0
    #: chunk runs that reported failed items (each attempt, retried or final)
    failed_attempts: int = 0
    #: failed chunks that went back to pending for another attempt
    retries: int = 0
    _lock: threading.Lock = field(default_factory=threading.Lock, repr=False)

    def add_lease_expiries(self, n: int) -> None:
        with self._lock:
            self.lease_expiries += n

    def add_attempts(self, failed: int, retried: int) -> None:
        with self._lock:
            self.failed_attempts += failed
            self.retries += retried


class _Rate:
    """items/s over the last ``window`` seconds from (time, total) samples."""

    def __init__(self, window: float) -> None:
        self.window = window
        self.points: deque[tuple[float, int]] = deque()

    def add(self, t: float, total: int) -> None:
        self.points.append((t, total))
        while len(self.points) > 2 and t - self.points[1][0] >= self.window:
            self.points.popleft()

    def per_second(self) -> float:
        if len(self.points) < 2:
            return 0.0
        (t0, v0), (t1, v1) = self.points[0], self.points[-1]
        return max(0.0, (v1 - v0) / (t1 - t0)) if t1 > t0 else 0.0


@dataclass
class Snapshot:
    """One sample, as the HTTP server serves it."""

    status: StatusView
    taken: float  # wall-clock time of the sample
    worker_rates: dict[str, float]  # worker name -> items/s
    job_rates: dict[str, float]  # job id -> items/s
    history: list[tuple[float, float]]  # (wall-clock time, items/s of the whole cluster)
    items_done_total: int
    duplicates_total: int
    items_failed_total: int

    def eta_s(self, job: Mapping[str, Any]) -> float | None:
        """Seconds until ``job`` is done at its current rate (None: not moving)."""
        rate = self.job_rates.get(str(job.get("id")), 0.0)
        left = int(job.get("items_total", 0)) - int(job.get("items_done", 0))
        return round(left / rate, 1) if rate > 0 and left > 0 else None


class Observer:
    """Samples ``source()`` every ``interval`` seconds; see the module docstring."""

    def __init__(
        self,
        source: Callable[[], StatusView],
        log: logging.Logger,
        *,
        interval: float = defaults.SAMPLE_INTERVAL,
        history_seconds: float = defaults.HISTORY_SECONDS,
        rate_window: float = defaults.RATE_WINDOW,
        clock: Callable[[], float] = time.monotonic,
        wall: Callable[[], float] = time.time,
    ) -> None:
        self._source = source
        self._log = log
        self.interval = interval
        self._clock, self._wall = clock, wall
        self._rate_window = rate_window
        self._lock = threading.Lock()
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self._history: deque[tuple[float, float]] = deque(
            maxlen=max(2, int(history_seconds / interval))
        )
        self._workers: dict[str, _Rate] = {}
        self._jobs: dict[str, _Rate] = {}
        # Last seen per-job counts; the totals grow by their increases only.
        self._seen: dict[str, tuple[int, int, int]] | None = None
        self._totals = [0, 0, 0]  # items done, duplicates, items failed
        self._last: tuple[float, int] | None = None  # (monotonic time, items done total)
        self._snapshot: Snapshot | None = None

    def sample(self) -> Snapshot:
        """Take one sample now (the thread calls this; tests call it directly)."""
        status = self._source()
        now, wall = self._clock(), self._wall()
        with self._lock:
            first = self._seen is None
            seen: dict[str, tuple[int, int, int]] = {}
            for view in status["jobs"]:
                # Read as a mapping: "items_failed" arrives with job control (docs/metrics.md).
                job: Mapping[str, Any] = view
                counts = (
                    int(job["items_done"]),
                    int(job.get("duplicates", 0)),
                    int(job.get("items_failed", 0)),
                )
                seen[job["id"]] = counts
                before = (self._seen or {}).get(job["id"], counts if first else (0, 0, 0))
                for i in range(3):
                    self._totals[i] += max(0, counts[i] - before[i])
                self._jobs.setdefault(job["id"], _Rate(self._rate_window)).add(now, counts[0])
            self._seen = seen
            self._jobs = {k: v for k, v in self._jobs.items() if k in seen}
            names = set()
            for w in status["workers"]:
                names.add(w["name"])
                self._workers.setdefault(w["name"], _Rate(self._rate_window)).add(
                    now, int(w["items_done"])
                )
            self._workers = {k: v for k, v in self._workers.items() if k in names}
            if self._last is not None and now > self._last[0]:
                rate = (self._totals[0] - self._last[1]) / (now - self._last[0])
                self._history.append((round(wall, 3), round(max(0.0, rate), 1)))
            self._last = (now, self._totals[0])
            snap = Snapshot(
                status=status,
                taken=wall,
                worker_rates={k: round(v.per_second(), 1) for k, v in self._workers.items()},
                job_rates={k: round(v.per_second(), 1) for k, v in self._jobs.items()},
                history=list(self._history),
                items_done_total=self._totals[0],
                duplicates_total=self._totals[1],
                items_failed_total=self._totals[2],
            )
            self._snapshot = snap
            return snap

    def snapshot(self) -> Snapshot:
        """The latest sample (taking one first if there is none yet)."""
        with self._lock:
            snap = self._snapshot
        return snap if snap is not None else self.sample()

    def start(self) -> None:
        self.sample()
        self._thread = threading.Thread(target=self._run, name="observer", daemon=True)
        self._thread.start()

    def _run(self) -> None:
        while not self._stop.wait(self.interval):
            try:
                self.sample()
            except Exception as exc:  # a failed sample must never stop the sampling
                self._log.error("sampling the status for HTTP failed: %s", exc)

    def stop(self) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout=5)

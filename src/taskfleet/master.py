"""The master: board + journal served over the manager protocol, in-process.

:class:`BoardService` is the object registered as ``get_board``; its public
methods are the whole remote API, listed and described in
:mod:`taskfleet.protocol`. Everything a caller is told has happened is in the
journal first.
"""

from __future__ import annotations

import errno
import logging
import os
import re
import shutil
import signal
import socket
import tempfile
import threading
import time
from collections.abc import Sequence
from typing import Any

from taskfleet import __version__, defaults, jobs, metrics, observe
from taskfleet.address import format_hostport
from taskfleet.board import Board, JobSpec
from taskfleet.errors import (
    BadJobArguments,
    BindError,
    JournalError,
    ProtocolMismatch,
    TaskfleetError,
)
from taskfleet.journal import DoneRow, Journal
from taskfleet.manager import TaskfleetServer
from taskfleet.observe import Counters, Observer
from taskfleet.protocol import (
    EXPOSED,
    PROTOCOL_VERSION,
    Ack,
    ChunkId,
    HelloReply,
    JobState,
    JobView,
    LostWorkerView,
    PingReply,
    Role,
    SpecWire,
    StatusView,
    SubmitReply,
    wire,
)
from taskfleet.web import WebApp, WebServer, load_static

_JOB_ID = re.compile(r"^[A-Za-z0-9_-]{1,64}$")


class BoardService:
    """The remote API. Thread-safe; one instance per master."""

    def __init__(self, board: Board, journal: Journal, log: logging.Logger, address: str) -> None:
        self.board = board
        self.journal = journal
        self.log = log
        self.address = address
        self.started = time.monotonic()
        self.server: TaskfleetServer | None = None
        self._commit = threading.Lock()
        self._submit = threading.Lock()
        self._results = threading.Condition()
        self._generation = 0
        self._job_started: dict[str, float] = {}
        self.counters = Counters()
        self.http_address: str | None = None  # set when the HTTP server runs
        # Workers that went silent without a goodbye: name -> (host, monotonic time
        # reaped); the verdict reports them (see _lost_view). The host of every worker
        # that joined, because the board forgets a silent worker's.
        self._lost: dict[str, tuple[str, float]] = {}
        self._hosts: dict[str, str] = {}
        self._lost_lock = threading.Lock()

    def _peer(self) -> str:
        return self.server.peer() if self.server is not None else ""

    def _joined(self, worker: str, host: str, processes: int = 0) -> None:
        if self.board.note_seen(worker, host, processes):
            with self._lost_lock:
                self._hosts[worker] = host or worker
                self._lost.pop(worker, None)
            extra = f", {processes} processes" if processes else ""
            self.log.info(
                "worker %s joined (host %s%s, from %s)", worker, host, extra, self._peer() or "?"
            )

    # -- workers -------------------------------------------------------------

    def ping(self) -> PingReply:
        return PingReply(
            ok=True, version=__version__, protocol=PROTOCOL_VERSION, address=self.address
        )

    def hello(self, protocol: int, role: str, name: str, host: str, processes: int) -> HelloReply:
        """First call on every connection: refuse another protocol; a worker joins the board."""
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
            self._joined(name, host, processes)
        lt = self.board.lease_timeout
        return HelloReply(
            protocol=PROTOCOL_VERSION,
            lease_timeout=lt,
            heartbeat_interval=defaults.heartbeat_interval(lt),
        )

    def heartbeat(self, worker: str, host: str, held: Sequence[tuple[str, int]]) -> None:
        self._joined(worker, host)
        self.board.heartbeat(worker, [ChunkId._make(c) for c in held], host)

    def lease(self, worker: str, n: int, wait: float = 0.0) -> list[tuple[Any, ...]]:
        leases = self.board.lease(worker, max(0, int(n)), min(float(wait), defaults.MAX_FETCH_WAIT))
        return wire(leases)

    def complete(self, worker: str, host: str, results: Sequence[tuple[str, int, bytes]]) -> Ack:
        """Accept results; journal them; only then acknowledge."""
        if not results:
            return Ack(accepted=0, duplicates=0)
        blobs = {ChunkId(job_id, index): blob for job_id, index, blob in results}
        with self._commit:
            outcome = self.board.complete(worker, list(blobs), host)
            rows = [DoneRow(c.job_id, c.chunk, worker, host, blobs[c]) for c in outcome.accepted]
            accepted = set(outcome.accepted)
            dups: dict[str, int] = {}
            for job_id, index, _ in results:
                if (job_id, index) not in accepted:
                    dups[job_id] = dups.get(job_id, 0) + 1
            try:
                self.journal.record_done(rows, dups)
                for job_id in outcome.finished_jobs:
                    self.journal.set_state(job_id, JobState.DONE)
            except Exception as exc:
                self.board.undo_complete(worker, outcome.accepted)
                self.log.error("journal write failed, %d chunks will run again: %s", len(rows), exc)
                raise JournalError(
                    f"the master could not journal results: {exc}", "see the master's log"
                ) from None
        with self._results:
            self._generation += 1
            self._results.notify_all()
        for job_id in outcome.finished_jobs:
            self._log_done(job_id)
        return Ack(accepted=len(outcome.accepted), duplicates=outcome.duplicates)

    def exchange(
        self,
        worker: str,
        host: str,
        results: Sequence[tuple[str, int, bytes]],
        want: int,
        wait: float = 0.0,
    ) -> tuple[Ack, list[tuple[Any, ...]]]:
        """complete() then lease() in one round trip."""
        ack = self.complete(worker, host, results)
        return ack, self.lease(worker, want, wait) if want > 0 else []

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

    def fail(self, worker: str, job_id: str, index: int, error: str) -> None:
        if self.board.fail_job(job_id, error):
            self.journal.set_state(job_id, JobState.FAILED, error)
            self.log.error("job %s failed: chunk %d on worker %s: %s", job_id, index, worker, error)
            with self._results:
                self._generation += 1
                self._results.notify_all()

    # -- clients -------------------------------------------------------------

    def submit(
        self,
        job_id: str,
        job: str,
        chunk_size: int,
        start: int = 0,
        stop: int = 0,
        items: Sequence[Any] | None = None,
    ) -> SubmitReply:
        """Create a job (idempotent per ``job_id``); refuse bad names/arguments."""
        if not isinstance(job_id, str) or not _JOB_ID.match(job_id):
            raise BadJobArguments(f"bad job id {job_id!r}", "use letters, digits, - and _")
        if not isinstance(chunk_size, int) or not 1 <= chunk_size <= defaults.MAX_CHUNK_SIZE:
            raise BadJobArguments(
                f"bad chunk size {chunk_size!r}",
                f"use 1..{defaults.MAX_CHUNK_SIZE} (default {defaults.CHUNK_SIZE})",
            )
        if items is None:
            if not isinstance(start, int) or not isinstance(stop, int) or stop <= start:
                raise BadJobArguments(f"bad range [{start}, {stop})", "give --range N with N >= 1")
        elif not items:
            raise BadJobArguments("no items to process", "put one item per line in the items file")
        jobs.validate(job, items)
        with self._submit:
            if self.board.has_job(job_id):
                spec = self.board.spec(job_id)
            else:
                spec = JobSpec(job_id, job, chunk_size, start, stop, items, time.time())
                self.journal.add_job(spec)
                self.board.add_job(spec)
                self._job_started[job_id] = time.monotonic()
                self.log.info(
                    "job %s submitted: %s over %d items in %d chunks",
                    job_id,
                    job,
                    spec.n_items,
                    spec.n_chunks,
                )
        return SubmitReply(id=spec.id, job=spec.job, n_items=spec.n_items, n_chunks=spec.n_chunks)

    def _spec(self, job_id: str) -> JobSpec:
        if not self.board.has_job(job_id):
            raise TaskfleetError(
                f"no job {job_id!r} on this master", "check the id (taskfleet status lists jobs)"
            )
        return self.board.spec(job_id)

    def job(self, job_id: str) -> tuple[SpecWire, JobView]:
        return self._spec(job_id).as_wire(), self.board.job_status(job_id)

    def fetch(
        self,
        job_id: str,
        after_seq: int,
        max_items: int = 200_000,
        wait: float = defaults.FETCH_WAIT,
    ) -> tuple[list[tuple[Any, ...]], JobView]:
        """Results journaled after ``after_seq``; long-polls up to ``wait`` s when none."""
        spec = self._spec(job_id)
        deadline = time.monotonic() + min(float(wait), defaults.MAX_FETCH_WAIT)
        while True:
            with self._results:
                generation = self._generation
            rows = self.journal.fetch(job_id, after_seq, max_items, spec.chunk_size)
            state = self.board.job_status(job_id)
            remaining = deadline - time.monotonic()
            if rows or state["state"] != JobState.RUNNING or remaining <= 0:
                return wire(rows), state
            with self._results:
                if self._generation == generation:
                    self._results.wait(remaining)

    def status(self) -> StatusView:
        view = self.board.status()
        return StatusView(
            master={
                "address": self.address,
                "uptime_s": round(time.monotonic() - self.started, 1),
                "version": __version__,
                "lease_timeout_s": self.board.lease_timeout,
                "journal": observe.journal_view(self.journal.path),
                "process": observe.process_view(),
                "http": self.http_address,
            },
            workers=view["workers"],
            lost_workers=self._lost_view({w["name"] for w in view["workers"]}),
            jobs=view["jobs"],
        )

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
        """Reap expired leases; log workers gone silent and job progress."""
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
            for job in self.board.status()["jobs"]:
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
    """Lifecycle: bind, open/resume the journal, serve, stop on SIGTERM/SIGINT."""

    def __init__(
        self,
        bind: str,
        port: int,
        authkey: bytes,
        journal_path: str | None,
        lease_timeout: float,
        log: logging.Logger,
        http: tuple[str, int] | None = None,
    ) -> None:
        self.bind, self.port = bind, port
        self._http = http
        self._authkey = authkey
        self._journal_path = journal_path
        self.lease_timeout = lease_timeout
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
        try:
            server = TaskfleetServer(
                self._board_handle, EXPOSED, (self.bind, self.port), self._authkey, self.log
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
            journal = Journal(path)
            service = BoardService(self.board, journal, self.log, address)
            service.server = server
            resumed = 0
            for spec, state, error, dups in journal.jobs():
                self.board.add_job(spec, journal.done_chunks(spec.id), dups, state, error)
                st = self.board.job_status(spec.id)
                if st["state"] == JobState.RUNNING:
                    resumed += 1
                    self.log.info(
                        "resumed job %s (%s): %d/%d chunks done",
                        spec.id,
                        spec.job,
                        st["chunks"]["done"],
                        spec.n_chunks,
                    )
        except BaseException:
            server.stop()
            if web is not None:
                web.stop()
            self._cleanup()
            raise
        self.service, self.server = service, server
        server.start()
        self.log.info(
            "master %s listening on %s (journal %s, lease timeout %gs, %d jobs resumed)",
            __version__,
            address,
            path,
            self.lease_timeout,
            resumed,
        )
        if web is not None:
            self._serve_http(web, service)

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
            handshakes_refused=server.refused_handshakes(),
            cpu_seconds=proc["cpu_seconds"],
            rss_bytes=proc["rss_bytes"],
            start_time=self._started_wall,
            threads=threading.active_count(),
            open_fds=observe.open_fds(),
            http_requests=requests,
            http_dropped=dropped,
        )

    def _board_handle(self) -> BoardService:
        """The registered ``get_board`` callable: a bound method, never pickled."""
        assert self.service is not None
        return self.service

    def _cleanup(self) -> None:
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
        assert self.server is not None and self.service is not None
        if self.web is not None:
            self.web.stop()
        if self.observer is not None:
            self.observer.stop()
        self.server.stop()
        self.service.close()
        self._cleanup()
        self.log.info("master stopped")

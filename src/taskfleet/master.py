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

from taskfleet import __version__, defaults, jobs
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
from taskfleet.protocol import (
    EXPOSED,
    PROTOCOL_VERSION,
    Ack,
    ChunkId,
    HelloReply,
    JobState,
    JobView,
    PingReply,
    Role,
    SpecWire,
    StatusView,
    SubmitReply,
    TLSView,
    wire,
)
from taskfleet.tls import CertInfo, TLSConfig, describe

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
        # The master's certificate and the CA's (status reports their expiry).
        self.certs: tuple[CertInfo, CertInfo] | None = None

    def _peer(self) -> str:
        return self.server.peer() if self.server is not None else ""

    def _joined(self, worker: str, host: str, processes: int = 0) -> None:
        if self.board.note_seen(worker, host, processes):
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
        return SubmitReply(
            id=spec.id,
            job=spec.job,
            n_items=spec.n_items,
            n_chunks=spec.n_chunks,
            result_types=jobs.declared_result_types(spec.job),
        )

    def _spec(self, job_id: str) -> JobSpec:
        if not self.board.has_job(job_id):
            raise TaskfleetError(
                f"no job {job_id!r} on this master", "check the id (taskfleet status lists jobs)"
            )
        return self.board.spec(job_id)

    def job(self, job_id: str) -> tuple[SpecWire, JobView]:
        spec = self._spec(job_id)
        wire_spec = spec.as_wire()
        try:
            wire_spec["result_types"] = jobs.declared_result_types(spec.job)
        except TaskfleetError:  # a job whose package is gone since: plain data only
            wire_spec["result_types"] = []
        return wire_spec, self.board.job_status(job_id)

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
                "tls": self._tls_view(),
            },
            workers=view["workers"],
            jobs=view["jobs"],
        )

    def _tls_view(self) -> TLSView:
        if self.certs is None:
            return TLSView(enabled=False)
        return describe(*self.certs)

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
        for worker in report.gone:
            self.log.warning(
                "worker %s left (silent for more than %gs); its leases go back to pending",
                worker,
                self.board.lease_timeout,
            )
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


def _bind_error(host: str, port: int, exc: OSError) -> BindError:
    where = format_hostport(host, port)
    if isinstance(exc, socket.gaierror):
        return BindError(
            f"cannot resolve --bind {host!r}", "use an IP address of this machine or 0.0.0.0"
        )
    if exc.errno == errno.EADDRINUSE:
        return BindError(
            f"port {port} on {host} is already in use",
            f"stop what listens there (ss -ltnp 'sport = :{port}') or choose another --port",
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
    return BindError(f"cannot bind {where}: {exc.strerror or exc}", "check --bind and --port")


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
        *,
        tls: TLSConfig | None = None,
    ) -> None:
        self.bind, self.port = bind, port
        self._authkey = authkey
        self._tls = tls
        self._journal_path = journal_path
        self.lease_timeout = lease_timeout
        self.log = log
        self._stop = threading.Event()
        self._tmpdir: str | None = None
        self.service: BoardService | None = None
        self.server: TaskfleetServer | None = None

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
            service.certs = certs
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
            self._cleanup()
            raise
        self.service, self.server = service, server
        server.start()
        self.log.info(
            "master %s listening on %s (%s, journal %s, lease timeout %gs, %d jobs resumed)",
            __version__,
            address,
            "mutual TLS" if certs is not None else "plaintext: no TLS",
            path,
            self.lease_timeout,
            resumed,
        )
        if certs is not None:
            self._check_names(certs[0])

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
        self.server.stop()
        self.service.close()
        self._cleanup()
        self.log.info("master stopped")

"""The worker: lease chunks, run them on a local process pool, send results.

Threads and connections:
  * the main thread owns one Session: ``exchange`` = send finished results +
    lease more, in one round trip. It keeps up to 2 x processes chunks in
    hand, so the pool always has the next chunk queued while results travel
    (prefetch). When it holds nothing it long-polls the master for work.
  * a heartbeat thread owns a second Session: it reports the chunks in hand
    (extending their leases), touches ``--heartbeat-file`` after every
    successful heartbeat, and notices a hung master by its own deadline.
  * the pool's supervisor thread (:mod:`taskfleet.pool`) feeds the pool
    processes and replaces any that dies.

Both replies (exchange, heartbeat) name the chunks in hand the worker should
stop — their job was cancelled or failed, or another worker finished them —
and the pool drops them, killing the processes that run them.

A chunk whose items failed (an exception, a hang past the job's item timeout,
a pool process that died, an unpicklable result) still comes back as a
result: the failures are described per item and the master decides whether
the chunk runs again. The worker itself survives all of them.

SIGTERM/SIGINT only set a flag (a call in flight is never interrupted): the
worker stops leasing, finishes what it holds for a few seconds, sends those
results, gives the rest back, and exits 0 well within 10 s.
"""

from __future__ import annotations

import logging
import signal
import threading
import time
from pathlib import Path

from taskfleet import defaults, jobs
from taskfleet.errors import AuthkeyRejected, ProtocolMismatch, Stopping, TaskfleetError
from taskfleet.manager import Session
from taskfleet.pool import Pool
from taskfleet.protocol import BoardStub, ChunkId, Result, Role

# Errors after which retrying cannot help: the worker exits with the message.
_FATAL = (AuthkeyRejected, ProtocolMismatch)


class Worker:
    def __init__(
        self,
        address: tuple[str, int],
        authkey: bytes,
        name: str,
        host: str,
        processes: int,
        heartbeat_file: str | None,
        log: logging.Logger,
    ) -> None:
        self.address = address
        self._authkey = authkey
        self.name = name
        self.host = host
        self.processes = processes
        self.heartbeat_file = heartbeat_file
        self.log = log
        self.stop = threading.Event()
        self.pool = Pool(processes, name, host, log)
        self._unacked: list[Result] = []
        # Until the master's hello reply says otherwise.
        self.lease_timeout = defaults.LEASE_TIMEOUT
        self.hb_interval = defaults.heartbeat_interval(defaults.LEASE_TIMEOUT)
        self._fatal: BaseException | None = None
        self.chunks_done = 0
        # What this worker can run beyond the built-ins, said at every hello.
        self.job_packages = jobs.installed_packages()

    # -- connection hooks ---------------------------------------------------------

    def _hello(self, session: Session) -> None:
        cfg = BoardStub(session.once).hello(
            Role.WORKER, self.name, self.host, self.processes, self.job_packages
        )
        self.lease_timeout = float(cfg["lease_timeout"])
        self.hb_interval = float(cfg["heartbeat_interval"])
        if session.connects == 1:
            self.log.info(
                "worker %s connected to %s (%d processes, lease timeout %gs)",
                self.name,
                session.where,
                self.processes,
                self.lease_timeout,
            )
        else:
            self.log.info("worker %s reconnected to %s", self.name, session.where)

    def _stop_chunks(self, chunks: list[ChunkId]) -> None:
        """The master says these chunks are no longer wanted: drop them from the pool."""
        dropped = self.pool.cancel(chunks)
        if dropped:
            jobs_ = sorted({c.job_id for c in chunks})
            self.log.info(
                "stopped %d chunks the master no longer needs (job %s)", dropped, ", ".join(jobs_)
            )

    def _touch_heartbeat_file(self) -> None:
        if not self.heartbeat_file:
            return
        try:
            path = Path(self.heartbeat_file)
            path.parent.mkdir(parents=True, exist_ok=True)
            path.write_text(f"{time.time():.3f} {self.name}\n")
        except OSError as exc:
            self.log.warning(
                "cannot write heartbeat file %s: %s", self.heartbeat_file, exc.strerror
            )

    def _heartbeats(self) -> None:
        # The deadline is this thread's way to notice a hung master: a
        # SIGSTOP'd master accepts TCP but never answers.
        session = Session(
            self.address,
            self._authkey,
            f"{self.name}/heartbeat",
            timeout=max(1.0, min(10.0, self.lease_timeout / 2)),
            give_up=None,
            log=self.log,
            stop=self.stop,
        )
        board = BoardStub(session)
        try:
            while not self.stop.is_set():
                try:
                    stop = board.heartbeat(self.name, self.host, self.pool.keys())
                    self._touch_heartbeat_file()
                    if stop:
                        self._stop_chunks(stop)
                except Stopping:
                    return
                except _FATAL as exc:
                    self._fatal = exc
                    self.stop.set()
                    return
                self.stop.wait(self.hb_interval)
        finally:
            session.close()

    # -- main loop -------------------------------------------------------------------

    def run(self) -> int:
        """Work until stopped; return the exit code."""
        for sig in (signal.SIGTERM, signal.SIGINT):
            signal.signal(sig, lambda signum, frame: self.stop.set())
        # The pool forks its processes now, before this process has any other thread.
        self.pool.start()
        try:
            session = Session(
                self.address,
                self._authkey,
                self.name,
                give_up=None,
                log=self.log,
                on_connect=self._hello,
                stop=self.stop,
            )
            board = BoardStub(session)
            try:
                board.ping()  # connect (hello) before heartbeats begin
                hb = threading.Thread(target=self._heartbeats, name="heartbeat", daemon=True)
                hb.start()
                self._loop(board)
            except Stopping:
                pass
            except _FATAL as exc:
                self._fatal = exc
            if self._fatal is not None:
                raise self._fatal
            self._drain(session, board)
            session.close()
            return 0
        finally:
            self.pool.close()

    def _collect(self) -> None:
        """Move finished chunks from the pool to the results to send."""
        for result in self.pool.take():
            if result.failed:
                first = result.errors[0] if result.errors else None
                what = f"{first.type or first.kind}: {first.message}" if first else "?"
                self.log.warning(
                    "chunk %d of job %s: %d items failed (first: item %s, %s)",
                    result.chunk,
                    result.job_id,
                    result.failed,
                    first.item if first else "?",
                    what[:300],
                )
            self._unacked.append(result)
        if self.pool.error is not None:
            raise TaskfleetError(
                f"the worker's process pool failed: {self.pool.error!r}",
                "restart the worker; its chunks are re-run elsewhere (see its log)",
            )

    def _loop(self, board: BoardStub) -> None:
        capacity = defaults.PREFETCH_PER_PROCESS * self.processes
        call_timeout = defaults.WORKER_CALL_TIMEOUT
        while not self.stop.is_set():
            self._collect()
            held = len(self.pool)
            want = capacity - held if held <= self.processes else 0
            batch = self._unacked[: defaults.MAX_RESULT_BATCH]
            if want == 0 and not batch:
                self.pool.wait(0.5)
                continue
            # Long-poll only when idle; otherwise keep the pool fed.
            wait = defaults.FETCH_WAIT if held == 0 and not batch else 0.0
            try:
                ack, leases, stop = board.exchange(
                    self.name,
                    self.host,
                    batch,
                    want,
                    wait,
                    self.pool.keys(),
                    timeout=call_timeout + wait,
                )
            except (*_FATAL, Stopping):
                raise
            except TaskfleetError as exc:
                # The master answered but failed (e.g. its journal is full):
                # keep the results, keep computing, try again shortly.
                self.log.error("the master refused %d results: %s; retrying in 2s", len(batch), exc)
                self.stop.wait(2.0)
                continue
            del self._unacked[: len(batch)]
            self.chunks_done += ack["accepted"]
            if stop:
                self._stop_chunks(stop)
            self.pool.submit(leases)
            if len(self.pool) and not self._unacked:
                self.pool.wait(0.5)

    def _drain(self, session: Session, board: BoardStub) -> None:
        """Finish what we hold (bounded), send it, give the rest back."""
        deadline = time.monotonic() + defaults.DRAIN_SECONDS
        self.log.info("worker %s draining: %d chunks in hand", self.name, len(self.pool))
        while len(self.pool) and time.monotonic() < deadline:
            self.pool.wait(max(0.05, min(0.5, deadline - time.monotonic())))
            self._collect()
        self._collect()
        # Bounded calls from here on: the master may be gone.
        session.last_calls(2.0)
        sent = 0
        try:
            while self._unacked:
                batch = self._unacked[: defaults.MAX_RESULT_BATCH]
                board.complete(self.name, self.host, batch)
                del self._unacked[: len(batch)]
                sent += len(batch)
            given_back = board.goodbye(self.name, self.pool.keys())
            self.log.info(
                "worker %s drained: %d results sent, %d chunks given back; exiting",
                self.name,
                sent,
                given_back,
            )
        except Exception as exc:
            self.log.warning(
                "worker %s could not reach the master while draining (%s); "
                "its leases will expire and be re-run elsewhere",
                self.name,
                exc,
            )

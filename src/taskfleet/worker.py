"""The worker: lease chunks, run them on a local process pool, send results.

Threads and connections:
  * the main thread owns one Session: ``exchange`` = send finished results +
    lease more, in one round trip. It keeps up to 2 x processes chunks in
    hand, so the pool always has the next chunk queued while results travel
    (prefetch). When it holds nothing it long-polls the master for work.
  * a heartbeat thread owns a second Session: it reports the chunks in hand
    (extending their leases), touches ``--heartbeat-file`` after every
    successful heartbeat, and notices a hung master by its own deadline.

SIGTERM/SIGINT only set a flag (a call in flight is never interrupted): the
worker stops leasing, finishes what it holds for a few seconds, sends those
results, gives the rest back, and exits 0 well within 10 s.
"""

from __future__ import annotations

import concurrent.futures as cf
import logging
import multiprocessing
import os
import signal
import threading
import time
from pathlib import Path
from typing import Any

from taskfleet import defaults, jobs
from taskfleet.errors import (
    AuthkeyRejected,
    ProtocolMismatch,
    Stopping,
    TaskfleetError,
    TLSError,
    TLSRefused,
)
from taskfleet.manager import Session
from taskfleet.protocol import BoardStub, ChunkId, Lease, Result, Role
from taskfleet.tls import TLSConfig

# Errors after which retrying cannot help: the worker exits with the message.
_FATAL = (AuthkeyRejected, ProtocolMismatch, TLSError, TLSRefused)


def _child_init() -> None:
    # The worker process drains on SIGTERM/SIGINT; a process-group signal
    # (Ctrl-C, an init forwarding to the group) must not kill chunks mid-run.
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    signal.signal(signal.SIGTERM, signal.SIG_IGN)


def _noop() -> int:
    return os.getpid()


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
        *,
        tls: TLSConfig | None = None,
    ) -> None:
        self.address = address
        self._authkey = authkey
        self._tls = tls
        self.name = name
        self.host = host
        self.processes = processes
        self.heartbeat_file = heartbeat_file
        self.log = log
        self.stop = threading.Event()
        self._held: dict[ChunkId, cf.Future[bytes]] = {}
        self._held_lock = threading.Lock()
        self._unacked: list[Result] = []
        # Until the master's hello reply says otherwise.
        self.lease_timeout = defaults.LEASE_TIMEOUT
        self.hb_interval = defaults.heartbeat_interval(defaults.LEASE_TIMEOUT)
        self._fatal: BaseException | None = None
        self._failures: list[tuple[str, int, str]] = []
        self.chunks_done = 0

    # -- connection hooks ---------------------------------------------------------

    def _hello(self, session: Session) -> None:
        cfg = BoardStub(session.once).hello(Role.WORKER, self.name, self.host, self.processes)
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

    def _held_ids(self) -> list[ChunkId]:
        with self._held_lock:
            return list(self._held)

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
            tls=self._tls,
        )
        board = BoardStub(session)
        try:
            while not self.stop.is_set():
                try:
                    board.heartbeat(self.name, self.host, self._held_ids())
                    self._touch_heartbeat_file()
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
        # fork, explicitly (3.14 defaults to forkserver): spawn/forkserver
        # children re-run the __main__ script, and a console script written
        # without an `if __name__ == "__main__"` guard would start a worker
        # in every pool process. With fork, ProcessPoolExecutor starts all
        # its processes on the first submit — here, before this process has
        # any other thread, so fork() is safe.
        ctx = multiprocessing.get_context("fork")
        pool = cf.ProcessPoolExecutor(self.processes, mp_context=ctx, initializer=_child_init)
        try:
            # Start every pool process now, not on the first chunk.
            for fut in [pool.submit(_noop) for _ in range(self.processes)]:
                fut.result()
            session = Session(
                self.address,
                self._authkey,
                self.name,
                give_up=None,
                log=self.log,
                on_connect=self._hello,
                stop=self.stop,
                tls=self._tls,
            )
            board = BoardStub(session)
            try:
                board.ping()  # connect (hello) before heartbeats begin
                hb = threading.Thread(target=self._heartbeats, name="heartbeat", daemon=True)
                hb.start()
                self._loop(board, pool)
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
            _kill_pool(pool)

    def _collect(self, done: set[cf.Future[bytes]]) -> None:
        with self._held_lock:
            finished = [(cid, f) for cid, f in self._held.items() if f in done]
            for cid, _ in finished:
                del self._held[cid]
        for (job_id, index), fut in finished:
            exc = fut.exception()
            if exc is None:
                self._unacked.append(Result(job_id, index, fut.result()))
            else:
                self._report_failure(job_id, index, exc)

    def _report_failure(self, job_id: str, index: int, exc: BaseException) -> None:
        text = f"{type(exc).__name__}: {exc}".replace("\n", " ")[:500]
        if isinstance(exc, cf.process.BrokenProcessPool):
            raise TaskfleetError(
                "the worker's process pool broke (a pool process died)",
                "restart the worker; check memory limits (dmesg) — its chunks are re-run elsewhere",
            )
        self.log.error("chunk %d of job %s failed: %s", index, job_id, text)
        self._failures.append((job_id, index, text))

    def _loop(self, board: BoardStub, pool: cf.ProcessPoolExecutor) -> None:
        capacity = defaults.PREFETCH_PER_PROCESS * self.processes
        call_timeout = defaults.WORKER_CALL_TIMEOUT
        while not self.stop.is_set():
            for job_id, index, text in self._failures:
                board.fail(self.name, job_id, index, text)
            self._failures.clear()
            held = len(self._held)
            want = capacity - held if held <= self.processes else 0
            batch = self._unacked[: defaults.MAX_RESULT_BATCH]
            if want == 0 and not batch:
                self._wait(0.5)
                continue
            # Long-poll only when idle; otherwise keep the pool fed.
            wait = defaults.FETCH_WAIT if held == 0 and not batch else 0.0
            try:
                ack, leases = board.exchange(
                    self.name, self.host, batch, want, wait, timeout=call_timeout + wait
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
            self._start(pool, leases)
            if self._held and not self._unacked:
                self._wait(0.5)

    def _start(self, pool: cf.ProcessPoolExecutor, leases: list[Lease]) -> None:
        for lease in leases:
            fut = pool.submit(jobs.run_chunk, lease.job, lease.payload)
            with self._held_lock:
                self._held[ChunkId(lease.job_id, lease.chunk)] = fut

    def _wait(self, timeout: float) -> None:
        with self._held_lock:
            futures = list(self._held.values())
        if not futures:
            self.stop.wait(timeout)
            return
        done, _ = cf.wait(futures, timeout=timeout, return_when=cf.FIRST_COMPLETED)
        if done:
            self._collect(done)

    def _drain(self, session: Session, board: BoardStub) -> None:
        """Finish what we hold (bounded), send it, give the rest back."""
        deadline = time.monotonic() + defaults.DRAIN_SECONDS
        self.log.info("worker %s draining: %d chunks in hand", self.name, len(self._held))
        while self._held and time.monotonic() < deadline:
            self._wait(max(0.05, min(0.5, deadline - time.monotonic())))
        # Bounded calls from here on: the master may be gone.
        session.last_calls(2.0)
        sent = 0
        try:
            while self._unacked:
                batch = self._unacked[: defaults.MAX_RESULT_BATCH]
                board.complete(self.name, self.host, batch)
                del self._unacked[: len(batch)]
                sent += len(batch)
            given_back = board.goodbye(self.name, self._held_ids())
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


def _kill_pool(pool: cf.ProcessPoolExecutor) -> None:
    """Stop pool processes now; never wait on a stuck chunk at exit."""
    procs: dict[int, Any] = dict(getattr(pool, "_processes", None) or {})
    pool.shutdown(wait=False, cancel_futures=True)
    for proc in procs.values():
        try:
            proc.terminate()
        except Exception:  # noqa: S110 - already gone is fine
            pass
    for proc in procs.values():
        proc.join(timeout=1.0)

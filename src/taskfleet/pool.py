"""The worker's process pool: forked processes it controls, one chunk at a time each.

Why not ``concurrent.futures.ProcessPoolExecutor``: one pool process that dies
(``os._exit``, a signal, the OOM killer) breaks the whole executor and nothing
says which chunk or item killed it; a hung item holds its process forever; an
exception that cannot be unpickled breaks the executor too. Here:

* each process runs one piece of one chunk at a time, so the pool knows which
  chunk every process runs; a supervisor thread waits on every process's pipe
  and sentinel, hands the next chunk to a process the moment it is free, and
  replaces a process that died or was killed;
* a job function's exception is formatted in the pool process, per item
  (:func:`taskfleet.jobs.run_segment`): only strings cross the pipe;
* crash attribution costs nothing on the fast path: a chunk whose process dies
  runs again in *isolation mode*, where the process writes the position and
  start time of each item to shared memory before running it. A death there
  names its item, which becomes a failure (kind ``crash``); the rest of the
  chunk runs on in a fresh process (or the chunk stops there when the job
  fails at its first error);
* with an item timeout a chunk runs in isolation mode from the start, and the
  supervisor kills the process whose current item ran too long (``timeout``);
* a process killed by SIGTERM or SIGINT from outside (a stop of the whole
  process group) was interrupted, not broken: its piece runs again;
* processes never outlive the worker: each asks the kernel for SIGKILL when the
  thread that forked it ends (``PR_SET_PDEATHSIG``, which covers ``kill -9`` of
  the worker), and :meth:`Pool.close` kills them on every exit path. They
  ignore SIGINT (Ctrl-C in a terminal reaches the whole group; the worker
  drains instead) and die on SIGTERM.

Processes are forked (``multiprocessing``'s fork context): spawn/forkserver
children would re-run the ``__main__`` script. The first ones are forked by
:meth:`Pool.start` before the worker has other threads; replacements are
forked by the supervisor thread, which lives as long as the pool (so their
parent-death signal fires only when the pool is gone). A replacement closes
the sockets it inherited: it must not keep the worker's connections to the
master open.
"""

from __future__ import annotations

import logging
import mmap
import multiprocessing
import os
import pickle
import signal
import stat
import sys
import threading
import time
from collections import deque
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field
from multiprocessing import connection as mpc
from multiprocessing.connection import Connection
from multiprocessing.process import BaseProcess
from typing import Any

from taskfleet import defaults, jobs
from taskfleet.protocol import ChunkId, FailureKind, ItemFailure, Lease, OnError, Payload, Result

_PR_SET_PDEATHSIG = 1
_NOT_STARTED = -1  # progress value before the first item of a piece


def _load_prctl() -> Callable[..., int] | None:
    """libc's prctl, looked up once in the worker (a child must not load libraries)."""
    try:
        import ctypes

        prctl: Callable[..., int] = ctypes.CDLL(None, use_errno=True).prctl
    except (ImportError, OSError, AttributeError):  # no ctypes, or not Linux: close() alone
        return None
    return prctl


_PRCTL = _load_prctl()


def exit_text(code: int | None) -> str:
    """How a pool process ended, for a failure message."""
    if code is None:
        return "it vanished"
    if code < 0:
        try:
            name = signal.Signals(-code).name
        except ValueError:
            name = f"signal {-code}"
        if -code == signal.SIGKILL:
            return f"killed by {name}: the OOM killer does that (see dmesg), or another process"
        return f"killed by {name}"
    return f"exited with code {code}"


def _close_inherited_sockets(keep: int) -> None:
    """Close every socket but ``keep``: a forked child must not hold the worker's
    connections to the master (a reconnect would leave them half-open for good)."""
    for name in os.listdir("/proc/self/fd"):
        fd = int(name)
        if fd <= 2 or fd == keep:
            continue
        try:
            if stat.S_ISSOCK(os.fstat(fd).st_mode):
                os.close(fd)
        except OSError:
            pass


def _child_main(
    conn: Connection, slot: int, shm: mmap.mmap, parent: int, worker: str, host: str
) -> None:
    """A pool process: run pieces of chunks until the pipe closes or says None."""
    if _PRCTL is not None:
        _PRCTL(_PR_SET_PDEATHSIG, signal.SIGKILL, 0, 0, 0)
    if os.getppid() != parent:  # the worker died before prctl took effect
        os._exit(0)
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    signal.signal(signal.SIGTERM, signal.SIG_DFL)
    _close_inherited_sockets(conn.fileno())
    progress = memoryview(shm).cast("q")
    while True:
        try:
            msg = conn.recv()
        except (EOFError, OSError):
            break
        if msg is None:
            break
        job, payload, lo, hi, isolate, stop_on_error = msg
        blob, failed, failures = jobs.run_segment(
            job,
            payload,
            lo,
            hi,
            stop_on_error=stop_on_error,
            progress=progress if isolate else None,
            slot=slot,
            worker=worker,
            host=host,
        )
        for stream in (sys.stdout, sys.stderr):
            try:  # what the job printed, before a later os._exit can lose it
                stream.flush()
            except (OSError, ValueError, AttributeError):
                pass
        try:
            conn.send((blob, failed, [tuple(f) for f in failures]))
        except (OSError, ValueError):
            break
    os._exit(0)


@dataclass(eq=False)
class _Piece:
    """Items ``[lo, hi)`` of a chunk to run, or (``failure`` set) one item that failed."""

    lo: int
    hi: int
    failure: ItemFailure | None = None


@dataclass(eq=False)
class _Task:
    """One leased chunk while the pool holds it."""

    key: ChunkId
    job: str
    payload: Payload
    data: Sequence[Any]
    item_timeout: float
    stop_on_error: bool
    isolate: bool
    todo: deque[_Piece]
    parts: list[bytes] = field(default_factory=list)
    failed: int = 0
    failures: list[ItemFailure] = field(default_factory=list)
    cancelled: bool = False

    def add_failures(self, failed: int, failures: Iterable[ItemFailure]) -> None:
        self.failed += failed
        for failure in failures:
            if len(self.failures) < defaults.MAX_CHUNK_ERRORS:
                self.failures.append(failure)


@dataclass(eq=False)
class _Slot:
    """One pool process and what it runs."""

    index: int
    proc: BaseProcess | None = None
    conn: Connection | None = None
    task: _Task | None = None
    piece: _Piece | None = None
    kill_reason: ItemFailure | None = None  # set when the pool killed it for a timeout
    killed: bool = False


class Pool:
    """N forked processes running leased chunks. See the module docstring.

    Lifecycle: ``start()`` forks the processes and starts the supervisor;
    ``submit()`` queues leases; finished chunks come back from ``take()`` as
    :class:`Result` (``wait()`` blocks until one is there); ``cancel()`` drops
    chunks (killing the processes that run them); ``close()`` kills everything.
    Every method but ``start``/``close`` may be called from any thread.
    """

    def __init__(self, processes: int, worker: str, host: str, log: logging.Logger) -> None:
        if processes < 1:
            raise ValueError("a pool needs at least one process")
        self.processes = processes
        self._worker, self._host = worker, host
        self._log = log
        self._ctx = multiprocessing.get_context("fork")
        self._lock = threading.RLock()
        self._ready = threading.Condition(self._lock)
        self._queue: deque[_Task] = deque()
        self._held: dict[ChunkId, _Task] = {}
        self._outcomes: list[Result] = []
        self._slots = [_Slot(i) for i in range(processes)]
        # Per slot: the position of the item running and its start (monotonic ns).
        self._shm = mmap.mmap(-1, 16 * processes)
        self._progress = memoryview(self._shm).cast("q")
        self._wake_r, self._wake_w = os.pipe()
        os.set_blocking(self._wake_w, False)
        self._closing = False
        self._thread: threading.Thread | None = None
        self.error: BaseException | None = None
        #: pool processes that died or were killed (cancel excluded), for the log and tests
        self.replaced = 0

    # -- the worker's side ------------------------------------------------------------------

    def start(self) -> None:
        """Fork every process now (before the worker starts threads), then supervise."""
        for slot in self._slots:
            self._spawn(slot)
        self._thread = threading.Thread(target=self._supervise, name="pool", daemon=True)
        self._thread.start()

    def pids(self) -> list[int]:
        """The pool processes alive now."""
        with self._lock:
            return [s.proc.pid for s in self._slots if s.proc is not None and s.proc.pid]

    def submit(self, leases: Iterable[Lease]) -> None:
        """Queue leased chunks; each runs as soon as a process is free."""
        with self._lock:
            for lease in leases:
                key = ChunkId(lease.job_id, lease.chunk)
                if key in self._held:
                    continue
                data = jobs.chunk_data(lease.payload)
                payload = lease.payload
                if payload[0] == "pickled":  # unpickle once here, not in every piece
                    payload = ("items", data)
                timeout = float(lease.item_timeout or 0.0)
                task = _Task(
                    key=key,
                    job=lease.job,
                    payload=payload,
                    data=data,
                    item_timeout=timeout,
                    stop_on_error=lease.on_error != OnError.SKIP,
                    isolate=timeout > 0,
                    todo=deque([_Piece(0, len(data))]),
                )
                self._held[key] = task
                self._queue.append(task)
        self._wake()

    def cancel(self, keys: Iterable[ChunkId]) -> int:
        """Drop chunks: queued ones are forgotten, running ones' processes killed."""
        count = 0
        with self._lock:
            for key in keys:
                task = self._held.pop(ChunkId(*key), None)
                if task is not None:
                    task.cancelled = True
                    count += 1
        if count:
            self._wake()
        return count

    def keys(self) -> list[ChunkId]:
        """The chunks the pool holds (queued or running, not yet taken)."""
        with self._lock:
            return list(self._held)

    def __len__(self) -> int:
        with self._lock:
            return len(self._held)

    def take(self) -> list[Result]:
        """Finished chunks since the last call."""
        with self._lock:
            out, self._outcomes = self._outcomes, []
            return out

    def wait(self, timeout: float) -> None:
        """Block until a chunk finished (or ``timeout`` seconds)."""
        with self._lock:
            if not self._outcomes and self.error is None:
                self._ready.wait(timeout)

    def close(self) -> None:
        """Stop the supervisor and kill every pool process (never waits on a chunk)."""
        with self._lock:
            self._closing = True
        self._wake()
        if self._thread is not None:
            self._thread.join(timeout=5.0)
        for slot in self._slots:
            if slot.proc is not None:
                try:
                    slot.proc.kill()
                except (OSError, ValueError):
                    pass
        for slot in self._slots:
            if slot.proc is not None:
                slot.proc.join(timeout=2.0)
                slot.proc = None
            if slot.conn is not None:
                slot.conn.close()
                slot.conn = None
        for fd in (self._wake_r, self._wake_w):
            try:
                os.close(fd)
            except OSError:
                pass

    # -- the supervisor -------------------------------------------------------------------------

    def _wake(self) -> None:
        try:
            os.write(self._wake_w, b"x")
        except (BlockingIOError, OSError):
            pass  # a wake-up is already pending (or the pool is closed)

    def _spawn(self, slot: _Slot) -> None:
        parent, child = mpc.Pipe(duplex=True)
        proc = self._ctx.Process(
            target=_child_main,
            args=(child, slot.index, self._shm, os.getpid(), self._worker, self._host),
            name=f"taskfleet-pool-{slot.index}",
        )
        proc.start()
        child.close()
        slot.proc, slot.conn = proc, parent
        slot.task = slot.piece = slot.kill_reason = None
        slot.killed = False

    def _supervise(self) -> None:
        try:
            while True:
                with self._lock:
                    if self._closing:
                        return
                self._kill_cancelled()
                self._assign()
                timeout = self._check_timeouts()
                waitables: list[Any] = [self._wake_r]
                for slot in self._slots:
                    if slot.proc is not None:
                        waitables.append(slot.proc.sentinel)
                        if slot.task is not None and slot.conn is not None:
                            waitables.append(slot.conn)
                ready = mpc.wait(waitables, timeout)
                if self._wake_r in ready:
                    os.read(self._wake_r, 4096)
                for slot in self._slots:
                    if slot.conn is not None and slot.conn in ready:
                        self._receive(slot)
                    if slot.proc is not None and slot.proc.sentinel in ready:
                        self._died(slot)
        except BaseException as exc:  # the worker sees it and stops with the reason
            self._log.exception("the worker's process pool failed")
            with self._lock:
                self.error = exc
                self._ready.notify_all()

    def _kill_cancelled(self) -> None:
        for slot in self._slots:
            task = slot.task
            if task is not None and task.cancelled and slot.proc is not None and not slot.killed:
                slot.killed = True
                slot.proc.kill()

    def _assign(self) -> None:
        """Give every idle process the next piece of the next queued chunk."""
        sends: list[tuple[_Slot, _Task, _Piece]] = []
        finished: list[_Task] = []
        with self._lock:
            for slot in self._slots:
                if slot.proc is None or slot.task is not None or slot.killed:
                    continue
                while self._queue:
                    task = self._queue.popleft()
                    if task.cancelled:
                        continue
                    piece = self._next_piece(task)
                    if piece is None:
                        finished.append(task)
                        continue
                    slot.task, slot.piece = task, piece
                    sends.append((slot, task, piece))
                    break
        for task in finished:
            self._finish(task)
        for slot, task, piece in sends:
            self._progress[2 * slot.index + 1] = time.monotonic_ns()
            self._progress[2 * slot.index] = _NOT_STARTED
            assert slot.conn is not None
            try:
                slot.conn.send(
                    (task.job, task.payload, piece.lo, piece.hi, task.isolate, task.stop_on_error)
                )
            except OSError:
                pass  # the process died: its sentinel says so next

    def _next_piece(self, task: _Task) -> _Piece | None:
        """The task's next piece to run; failed items on the way become placeholders."""
        while task.todo:
            piece = task.todo.popleft()
            if piece.failure is None:
                if piece.lo < piece.hi:
                    return piece
                continue
            task.add_failures(1, [piece.failure])
            stand_in = jobs.placeholder(piece.failure, self._worker, self._host)
            task.parts.append(pickle.dumps([stand_in], protocol=pickle.HIGHEST_PROTOCOL))
        return None

    def _check_timeouts(self) -> float | None:
        """Kill processes whose item ran past its timeout; seconds until the next deadline."""
        now = time.monotonic_ns()
        nearest: int | None = None
        for slot in self._slots:
            task, piece = slot.task, slot.piece
            if task is None or piece is None or task.item_timeout <= 0 or slot.proc is None:
                continue
            if slot.kill_reason is not None or slot.killed:
                continue
            pos = self._progress[2 * slot.index]
            started = self._progress[2 * slot.index + 1]
            if pos == jobs.PICKLING:
                continue
            deadline = started + int(task.item_timeout * 1e9)
            if now < deadline:
                nearest = deadline - now if nearest is None else min(nearest, deadline - now)
                continue
            k = pos if piece.lo <= pos < piece.hi else piece.lo
            slot.kill_reason = ItemFailure(
                k,
                FailureKind.TIMEOUT.value,
                "",
                f"the item ran longer than the job's item timeout ({task.item_timeout:g}s);"
                " its pool process was killed",
                jobs.safe_repr(task.data[k]),
                "",
            )
            slot.proc.kill()
        return None if nearest is None else max(0.001, nearest / 1e9)

    def _receive(self, slot: _Slot) -> None:
        assert slot.conn is not None
        try:
            blob, failed, failures = slot.conn.recv()
        except (EOFError, OSError):
            self._died(slot)
            return
        task = slot.task
        slot.task = slot.piece = None
        if task is None or task.cancelled:
            return
        task.parts.append(blob)
        task.add_failures(failed, [ItemFailure._make(f) for f in failures])
        if failed and task.stop_on_error:
            self._finish(task)
        else:
            self._requeue(task)

    def _requeue(self, task: _Task) -> None:
        """Put a task with pieces left at the front of the queue (it was running)."""
        with self._lock:
            self._queue.appendleft(task)

    def _died(self, slot: _Slot) -> None:
        """A pool process ended: replace it, and decide what its piece means."""
        proc = slot.proc
        if proc is None:
            return
        proc.join(timeout=2.0)
        code = proc.exitcode
        if slot.conn is not None:
            slot.conn.close()
        task, piece, reason, killed = slot.task, slot.piece, slot.kill_reason, slot.killed
        slot.proc = slot.conn = None
        with self._lock:
            closing = self._closing
        if closing:
            return
        if not killed:
            self.replaced += 1
        self._spawn(slot)
        if task is None or piece is None or task.cancelled:
            if task is None and not killed:
                self._log.warning("an idle pool process ended (%s); replaced it", exit_text(code))
            return
        where = f"chunk {task.key.chunk} of job {task.key.job_id}"
        if reason is not None:
            self._log.error(
                "%s: item %s hung past the item timeout; killed its pool process",
                where,
                reason.item,
            )
            self._fail_item(task, piece, reason)
            return
        if code is not None and -code in (signal.SIGTERM, signal.SIGINT):
            self._log.warning(
                "%s interrupted (its pool process was %s); running it again",
                where,
                exit_text(code),
            )
            task.todo.appendleft(piece)
            self._requeue(task)
            return
        if not task.isolate:
            self._log.warning(
                "%s: its pool process died (%s); running the chunk again item by item"
                " to find the item",
                where,
                exit_text(code),
            )
            task.isolate = True
            task.todo.appendleft(piece)
            self._requeue(task)
            return
        pos = self._progress[2 * slot.index]
        if pos == jobs.PICKLING:  # every item ran; their results did not survive
            message = f"the pool process died ({exit_text(code)}) while pickling the results"
            failures = [
                ItemFailure(
                    k, FailureKind.CRASH.value, "", message, jobs.safe_repr(task.data[k]), ""
                )
                for k in range(piece.lo, piece.hi)
            ]
            self._log.error(
                "%s: items %s to %s: %s", where, failures[0].item, failures[-1].item, message
            )
            if task.stop_on_error:
                self._fail_item(task, piece, failures[0])
                return
            task.todo.extendleft(_Piece(f.position, f.position + 1, f) for f in reversed(failures))
            self._requeue(task)
            return
        k = pos if piece.lo <= pos < piece.hi else piece.lo
        message = f"the pool process died ({exit_text(code)}) while running this item"
        failure = ItemFailure(
            k, FailureKind.CRASH.value, "", message, jobs.safe_repr(task.data[k]), ""
        )
        self._log.error("%s: item %s: %s", where, failure.item, message)
        self._fail_item(task, piece, failure)

    def _fail_item(self, task: _Task, piece: _Piece, failure: ItemFailure) -> None:
        """Item ``failure.position`` of ``piece`` failed in a process that is gone."""
        if task.stop_on_error:
            task.add_failures(1, [failure])
            self._finish(task)
            return
        k = failure.position
        task.todo.appendleft(_Piece(k + 1, piece.hi))
        task.todo.appendleft(_Piece(k, k + 1, failure))
        task.todo.appendleft(_Piece(piece.lo, k))
        self._requeue(task)

    def _finish(self, task: _Task) -> None:
        result = Result(
            task.key.job_id,
            task.key.chunk,
            jobs.join_blobs(task.parts) if task.parts else pickle.dumps([]),
            task.failed,
            list(task.failures),
        )
        with self._lock:
            if self._held.get(task.key) is task:
                del self._held[task.key]
                self._outcomes.append(result)
                self._ready.notify_all()

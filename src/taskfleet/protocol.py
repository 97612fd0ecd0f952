"""The wire's contract: what masters, workers and clients say to each other.

Transport (``manager.py``): the ``multiprocessing.managers`` protocol. After the
authkey handshake a peer sends ``(BOARD_IDENT, method, args, {})`` and reads
``("#RETURN", value)`` or ``("#ERROR", TaskfleetError)``. The master exposes one
object, the board service, under the fixed identity ``BOARD_IDENT``; its
methods are :class:`Method`, and nothing else is callable (``EXPOSED``).

Values on the wire are plain data only: tuples, lists, dicts, str, int, float,
bool, bytes, None — plus :class:`taskfleet.errors.TaskfleetError` subclasses in
``#ERROR`` replies. The named tuples below document the shapes and give the
two ends typed access; they are sent as plain tuples (a named tuple pickles
with a class reference, 5x slower to encode and decode) and rebuilt on
arrival by :class:`BoardStub`. Job states travel as their string values.

Every method is safe to retry: a :class:`~taskfleet.manager.Session` resends a
call on a new connection when the old one broke, so a method must give the
same outcome when it arrives twice.

``PROTOCOL_VERSION`` changes whenever a method's arguments or a shape change;
``hello`` refuses a peer that speaks another version, in one line, before it
does anything else.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from enum import StrEnum
from typing import Any, Final, NamedTuple, Protocol, TypedDict

PROTOCOL_VERSION: Final = 2
"""Version 1 was the first release (no hello version check); 2 adds it."""

BOARD_IDENT: Final = "board"
"""Identity of the board service object on every master (never released)."""

BOARD_TYPEID: Final = "get_board"
"""Registered type id: stock ``BaseManager`` clients call ``get_board()``."""


class Method(StrEnum):
    """Every method of the board service. Workers use the first group, clients the second."""

    HELLO = "hello"  # (protocol, role, name, host, processes) -> HelloReply
    HEARTBEAT = "heartbeat"  # (worker, host, held: [ChunkId]) -> None
    LEASE = "lease"  # (worker, n, wait) -> [Lease]
    COMPLETE = "complete"  # (worker, host, results: [Result]) -> Ack
    EXCHANGE = "exchange"  # (worker, host, results, want, wait) -> (Ack, [Lease])
    RELEASE = "release"  # (worker, chunks: [ChunkId]) -> int
    GOODBYE = "goodbye"  # (worker, chunks: [ChunkId]) -> int
    FAIL = "fail"  # (worker, job_id, index, error) -> None

    PING = "ping"  # () -> PingReply
    SUBMIT = "submit"  # (job_id, job, chunk_size, start, stop, items) -> SubmitReply
    JOB = "job"  # (job_id) -> (SpecWire, JobView)
    FETCH = "fetch"  # (job_id, after_seq, max_items, wait) -> ([ResultRow], JobView)
    STATUS = "status"  # () -> StatusView


EXPOSED: Final[tuple[str, ...]] = tuple(m.value for m in Method)
"""The names a remote peer may call; the server refuses every other name."""


class Role(StrEnum):
    """Who says hello: a worker joins the board, a client only checks the version."""

    WORKER = "worker"
    CLIENT = "client"


class JobState(StrEnum):
    """A job's lifecycle. Stored and sent as the plain string value."""

    RUNNING = "running"  # chunks are pending, leased or done
    DONE = "done"  # every chunk's results are journaled
    FAILED = "failed"  # a job function raised; no more chunks are handed out


# -- shapes ------------------------------------------------------------------------------

Payload = tuple[Any, ...]
"""A chunk's items: ``("range", start, stop)`` or ``("items", [item, ...])``."""


class ChunkId(NamedTuple):
    """One chunk of one job."""

    job_id: str
    chunk: int  # the chunk index within its job


class Lease(NamedTuple):
    """What a worker receives per chunk: run ``job`` over ``payload``."""

    job_id: str
    chunk: int  # the chunk index within its job
    job: str
    payload: Payload


class Result(NamedTuple):
    """One finished chunk, worker → master: the pickled result list, never unpickled there."""

    job_id: str
    chunk: int  # the chunk index within its job
    blob: bytes


class ResultRow(NamedTuple):
    """One journaled chunk, master → client; ``seq`` orders the stream and resumes it."""

    seq: int
    chunk: int  # the chunk index within its job
    worker: str
    host: str
    blob: bytes


class SpecWire(TypedDict):
    """A submitted job as ``job`` returns it (``taskfleet.board.JobSpec`` on either end).

    ``items`` is None for a range job over ``[start, stop)``.
    """

    id: str
    job: str
    chunk_size: int
    start: int
    stop: int
    items: list[Any] | None
    created: float


class Ack(TypedDict):
    """The master's answer to ``complete``: chunks journaled, and results it already had."""

    accepted: int
    duplicates: int


class HelloReply(TypedDict):
    """What the master tells a peer at hello."""

    protocol: int
    lease_timeout: float
    heartbeat_interval: float


class PingReply(TypedDict):
    ok: bool
    version: str
    protocol: int
    address: str


class SubmitReply(TypedDict):
    id: str
    job: str
    n_items: int
    n_chunks: int


class ChunkCounts(TypedDict):
    pending: int
    leased: int
    done: int


class _JobViewBase(TypedDict):
    id: str
    job: str
    state: str  # a JobState value
    chunks: ChunkCounts
    items_total: int
    items_done: int
    duplicates: int


class JobView(_JobViewBase, total=False):
    """One job as ``status`` and ``fetch`` report it; ``error`` only when it failed."""

    error: str


class WorkerView(TypedDict):
    """One connected worker (seen within the lease timeout)."""

    name: str
    host: str
    last_heartbeat_age_s: float
    chunks_done: int
    items_done: int
    leased: int


class LostWorkerView(TypedDict):
    """A worker that went silent without saying goodbye (its leases went back to pending).

    Listed until it comes back, or for ``defaults.LOST_WORKER_WINDOW`` seconds.
    """

    name: str
    host: str
    last_heartbeat_age_s: float


class JournalView(TypedDict):
    """The journal's file (with its WAL) and the file system it lives on."""

    path: str
    bytes: int
    disk_free_bytes: int
    disk_size_bytes: int


class ProcessView(TypedDict):
    """The master process: resident memory and CPU time used so far."""

    rss_bytes: int
    cpu_seconds: float


class MasterView(TypedDict):
    address: str
    uptime_s: float
    version: str
    lease_timeout_s: float
    journal: JournalView
    process: ProcessView
    http: str | None  # HOST:PORT of the HTTP server (metrics, dashboard), None when off


class StatusView(TypedDict):
    """``status``: the document behind ``taskfleet status --json`` (docs/interfaces.md).

    ``taskfleet status --json`` and ``/api/status`` add the verdict: ``healthy``
    and ``problems`` (:mod:`taskfleet.health`).
    """

    master: MasterView
    workers: list[WorkerView]
    lost_workers: list[LostWorkerView]
    jobs: list[JobView]


# -- typed calls ---------------------------------------------------------------------------


class Caller(Protocol):
    """Anything that sends one call to the board and returns its value (a Session)."""

    def call(self, method: str, *args: Any, timeout: float | None = None) -> Any: ...


def wire(items: Iterable[tuple[Any, ...]]) -> list[tuple[Any, ...]]:
    """Named tuples → plain tuples for sending (see the module docstring)."""
    return [tuple(t) for t in items]


class BoardStub:
    """Typed methods over a :class:`Caller`: the one place that spells the wire's calls.

    The stub converts shapes both ways; retries and reconnects are the caller's.
    """

    def __init__(self, caller: Caller) -> None:
        self._caller = caller

    # -- every peer

    def hello(self, role: Role, name: str, host: str = "", processes: int = 0) -> HelloReply:
        reply: HelloReply = self._caller.call(
            Method.HELLO.value, PROTOCOL_VERSION, role.value, name, host, processes
        )
        return reply

    def ping(self) -> PingReply:
        reply: PingReply = self._caller.call(Method.PING.value)
        return reply

    # -- workers

    def heartbeat(self, worker: str, host: str, held: Sequence[ChunkId]) -> None:
        self._caller.call(Method.HEARTBEAT.value, worker, host, wire(held))

    def exchange(
        self,
        worker: str,
        host: str,
        results: Sequence[Result],
        want: int,
        wait: float,
        *,
        timeout: float | None = None,
    ) -> tuple[Ack, list[Lease]]:
        ack, leases = self._caller.call(
            Method.EXCHANGE.value, worker, host, wire(results), want, wait, timeout=timeout
        )
        return ack, [Lease._make(t) for t in leases]

    def complete(self, worker: str, host: str, results: Sequence[Result]) -> Ack:
        ack: Ack = self._caller.call(Method.COMPLETE.value, worker, host, wire(results))
        return ack

    def goodbye(self, worker: str, held: Sequence[ChunkId]) -> int:
        return int(self._caller.call(Method.GOODBYE.value, worker, wire(held)))

    def fail(self, worker: str, job_id: str, index: int, error: str) -> None:
        self._caller.call(Method.FAIL.value, worker, job_id, index, error)

    # -- clients

    def submit(
        self,
        job_id: str,
        job: str,
        chunk_size: int,
        start: int = 0,
        stop: int = 0,
        items: Sequence[Any] | None = None,
        *,
        timeout: float | None = None,
    ) -> SubmitReply:
        reply: SubmitReply = self._caller.call(
            Method.SUBMIT.value, job_id, job, chunk_size, start, stop, items, timeout=timeout
        )
        return reply

    def job(self, job_id: str) -> tuple[SpecWire, JobView]:
        spec, view = self._caller.call(Method.JOB.value, job_id)
        return spec, view

    def fetch(
        self, job_id: str, after_seq: int, max_items: int, wait: float, *, timeout: float
    ) -> tuple[list[ResultRow], JobView]:
        rows, view = self._caller.call(
            Method.FETCH.value, job_id, after_seq, max_items, wait, timeout=timeout
        )
        return [ResultRow._make(r) for r in rows], view

    def status(self) -> StatusView:
        view: StatusView = self._caller.call(Method.STATUS.value)
        return view

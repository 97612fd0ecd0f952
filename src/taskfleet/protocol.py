"""The wire's contract: what masters, workers and clients say to each other.

Transport (``manager.py``): the ``multiprocessing.managers`` protocol. After the
authkey handshake a peer sends ``(BOARD_IDENT, method, args, {})`` and reads
``("#RETURN", value)`` or ``("#ERROR", TaskfleetError)``. The master exposes one
object, the board service, under the fixed identity ``BOARD_IDENT``; its
methods are :class:`Method`, and nothing else is callable (``EXPOSED``).

Values on the wire are plain data only: tuples, lists, dicts, str, int, float,
bool, bytes, None — plus :class:`taskfleet.errors.TaskfleetError` subclasses in
``#ERROR`` replies. Every side enforces it: messages are decoded by
:mod:`taskfleet.safepickle`, which refuses any other class or function.
Result blobs (bytes inside messages) are decoded by the client alone, with the
types the job declares (``result_types`` in the submit and job replies).

The named tuples below document the shapes and give the two ends typed
access; they are sent as plain tuples (a named tuple pickles with a class
reference, 5x slower to encode and decode, and refused by the restricted
unpickler) and rebuilt on arrival by :class:`BoardStub`. Job states travel as
their string values.

Every method is safe to retry: a :class:`~taskfleet.manager.Session` resends a
call on a new connection when the old one broke, so a method must give the
same outcome when it arrives twice.

Item lists travel in pieces (``open``, then ``append`` batch after batch, then
``seal``): neither the client nor the master ever holds a job's whole item
list, and a batch resent after a reconnect is recognised by its sequence
number and not added twice. A job is not leased before it is sealed; an
upload whose client stops sending is dropped after
``defaults.UPLOAD_IDLE_TIMEOUT``. The master keeps the items in its journal,
one value per chunk, and hands a chunk's items out as the pickled list it
stored (``("pickled", bytes)``); a small list may come whole in ``submit``.

``PROTOCOL_VERSION`` changes whenever a method's arguments or a shape change;
``hello`` refuses a peer that speaks another version, in one line, before it
does anything else.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from enum import StrEnum
from typing import Any, Final, NamedTuple, NotRequired, Protocol, TypedDict

PROTOCOL_VERSION: Final = 6
"""Version 1 was the first release (no hello version check); 2 adds it; 3 adds job control
(per-item failures, retries, cancel, ordered fetch, job listing) and drops ``fail``; 4 adds
the worker's job packages to ``hello`` and the job's code version to its spec and views;
5 decodes every message with the restricted unpickler, adds ``result_types`` to the
submit and job replies and the master's TLS to ``status`` (and TLS, which an older
peer cannot speak); 6 streams item lists (``open``/``append``/``seal``, items stored per
chunk, fetched with their results on request) and replaces ``SpecWire.items`` by
``listed``."""

BOARD_IDENT: Final = "board"
"""Identity of the board service object on every master (never released)."""

BOARD_TYPEID: Final = "get_board"
"""Registered type id: stock ``BaseManager`` clients call ``get_board()``."""


class Method(StrEnum):
    """Every method of the board service. Workers use the first group, clients the second."""

    HELLO = "hello"  # (protocol, role, name, host, processes, job_packages) -> HelloReply
    HEARTBEAT = "heartbeat"  # (worker, host, held: [ChunkId]) -> [ChunkId] to stop
    LEASE = "lease"  # (worker, n, wait) -> [Lease]
    COMPLETE = "complete"  # (worker, host, results: [Result]) -> Ack
    # (worker, host, results, want, wait, held) -> (Ack, [Lease], [ChunkId] to stop)
    EXCHANGE = "exchange"
    RELEASE = "release"  # (worker, chunks: [ChunkId]) -> int
    GOODBYE = "goodbye"  # (worker, chunks: [ChunkId]) -> int

    PING = "ping"  # () -> PingReply
    # (job_id, job, chunk_size, start, stop, items, step, options: JobOptions) -> SubmitReply;
    # items: None (a range job) or at most max(UPLOAD_BATCH_ITEMS, chunk_size) of them
    SUBMIT = "submit"
    OPEN = "open"  # (job_id, job, chunk_size, options) -> UploadReply: an upload begins
    # (job_id, seq, items) -> UploadReply: batch seq (0, 1, …) of whole chunks; a batch
    # whose last chunk is short ends the items; a batch already received is not added again
    APPEND = "append"
    SEAL = "seal"  # (job_id, n_items) -> SubmitReply: the items are complete; the job runs
    JOB = "job"  # (job_id) -> (SpecWire, JobView)
    JOBS = "jobs"  # (limit) -> JobList, newest first
    WAIT = "wait"  # (job_id, wait) -> JobView, as soon as the job is finished or after wait s
    # (job_id, after_seq, max_items, wait, items) -> ([ResultRow], JobView): by seq
    FETCH = "fetch"
    # (job_id, from_chunk, max_items, wait, items) -> ([ResultRow], JobView): by chunk index
    FETCH_ORDERED = "fetch_ordered"
    ERRORS = "errors"  # (job_id, limit) -> [ErrorView], oldest first
    CANCEL = "cancel"  # (job_id) -> JobView
    STATUS = "status"  # () -> StatusView


EXPOSED: Final[tuple[str, ...]] = tuple(m.value for m in Method)
"""The names a remote peer may call; the server refuses every other name."""


class Role(StrEnum):
    """Who says hello: a worker joins the board, a client only checks the version."""

    WORKER = "worker"
    CLIENT = "client"


class JobState(StrEnum):
    """A job's lifecycle. Sent as the plain string value.

    ``pending`` is only ever reported, never stored: the journal and the board
    keep a job that has not handed out a chunk yet as ``running``.
    """

    PENDING = "pending"  # submitted; no chunk handed out yet
    RUNNING = "running"  # chunks are pending, leased or done
    DONE = "done"  # every chunk's results are journaled (on_error="skip": some items failed)
    FAILED = "failed"  # a chunk failed after its retries (on_error="fail"); nothing more runs
    CANCELLED = "cancelled"  # cancelled by a client; nothing more runs, later results dropped

    @property
    def finished(self) -> bool:
        """True for the three end states (done, failed, cancelled)."""
        return self in (JobState.DONE, JobState.FAILED, JobState.CANCELLED)


class OnError(StrEnum):
    """What a job does once a chunk has failed ``retries + 1`` times."""

    FAIL = "fail"  # the job fails; no further chunks are handed out
    SKIP = "skip"  # the chunk's failed items are recorded, its other results kept


class FailureKind(StrEnum):
    """Why an item failed."""

    EXCEPTION = "exception"  # the job function raised
    TIMEOUT = "timeout"  # the item ran longer than the job's item_timeout
    CRASH = "crash"  # the pool process died on it (os._exit, a signal, the OOM killer)
    UNPICKLABLE = "unpicklable"  # its result cannot be pickled


# -- shapes ------------------------------------------------------------------------------

Payload = tuple[Any, ...]
"""A chunk's items: ``("range", start, stop)``, ``("range", start, stop, step)`` (the
arguments of ``range()``), ``("items", [item, ...])``, or ``("pickled", bytes)`` (the
list as the master stores it, see :func:`taskfleet.jobs.chunk_data`)."""


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
    item_timeout: float = 0.0  # seconds one item may run; 0: no limit
    on_error: str = OnError.FAIL.value  # "fail": a chunk may stop at its first failed item


class ItemFailure(NamedTuple):
    """One failed item as the worker reports it (plain strings, formatted in the pool process)."""

    position: int  # the item's position within its chunk
    kind: str  # a FailureKind value
    type: str  # the exception's qualified type name ("" for crashes and timeouts)
    message: str
    item: str  # repr of the item, truncated
    traceback: str  # formatted in the pool process; "" when there is none


class Result(NamedTuple):
    """One finished chunk, worker → master: the pickled result list, never unpickled there.

    ``failed`` items hold an :class:`taskfleet.errors.ItemError` in ``blob``;
    ``errors`` details the first of them (at most ``defaults.MAX_CHUNK_ERRORS``).
    A chunk with ``failed > 0`` counts as a failed attempt (see ``JobOptions``).
    """

    job_id: str
    chunk: int  # the chunk index within its job
    blob: bytes
    failed: int = 0
    errors: Sequence[ItemFailure] = ()

    def to_wire(self) -> tuple[Any, ...]:
        """A plain tuple, the failures too (nested named tuples would pickle their class)."""
        return (self.job_id, self.chunk, self.blob, self.failed, [tuple(e) for e in self.errors])

    @classmethod
    def from_wire(cls, t: Sequence[Any]) -> Result:
        """Rebuild a result; a bare ``(job_id, chunk, blob)`` is a chunk without failures."""
        if len(t) == 3:
            return cls(t[0], t[1], t[2])
        job_id, chunk, blob, failed, errors = t
        return cls(job_id, chunk, blob, int(failed), [ItemFailure._make(e) for e in errors])


class ResultRow(NamedTuple):
    """One journaled chunk, master → client; ``seq`` orders the stream and resumes it.

    ``items`` is the chunk's items as the master stores them (a pickled list) when the
    fetch asked for them and the job is an item-list job; None otherwise.
    """

    seq: int
    chunk: int  # the chunk index within its job
    worker: str
    host: str
    blob: bytes
    failed: int  # items of this chunk that failed (on_error="skip")
    items: bytes | None = None


class JobOptions(TypedDict):
    """How a job treats failures (``submit``'s last argument)."""

    retries: int  # times a failed chunk runs again before on_error applies
    on_error: str  # an OnError value
    item_timeout: float | None  # seconds one item may run; None: no limit


class SpecWire(TypedDict):
    """A submitted job as ``job`` returns it (``taskfleet.board.JobSpec`` on either end).

    ``listed`` is None for a range job over ``range(start, stop, step)``; for an
    item-list job it is the number of items (their values come with the results:
    ``fetch``'s ``items`` flag).
    ``result_types`` (in the ``job`` reply): what the job declares its results
    may hold besides plain data, as "module:qualname"
    (:func:`taskfleet.jobs.result_types`).
    """

    id: str
    job: str
    chunk_size: int
    start: int
    stop: int
    step: int
    listed: int | None
    created: float
    options: JobOptions
    code_version: str  # "<distribution> <version>" the master resolved the name to; "" unknown
    result_types: NotRequired[list[str]]


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
    """The master's answer to ``submit``; ``result_types`` as in :class:`SpecWire`."""

    id: str
    job: str
    n_items: int
    n_chunks: int
    code_version: str  # as in SpecWire
    result_types: list[str]


class UploadReply(TypedDict):
    """Where an upload stands: the next batch the master expects (-1: the job is sealed
    already, an ``open`` resent after a lost reply), and the items received so far."""

    id: str
    seq: int
    n_items: int


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
    """One job as ``status``, ``jobs`` and ``fetch`` report it.

    ``error`` (a one-line summary) only when the job failed; the rest is always
    there (total=False only because the fields were added after version 2).
    """

    error: str
    items_failed: int  # items whose failure was accepted (on_error="skip")
    created: float  # wall-clock time of the submit
    finished: float | None  # wall-clock time it reached done, failed or cancelled
    retries: int
    on_error: str
    item_timeout: float | None
    code_version: str  # the job's code as resolved at submit: "<distribution> <version>"


class JobList(TypedDict):
    """``jobs``: the newest jobs first, at most ``limit``; ``total`` counts every job."""

    jobs: list[JobView]
    total: int


class ErrorView(TypedDict):
    """One journaled item failure (``errors``; ``taskfleet job JOB_ID``)."""

    job_id: str
    chunk: int
    index: int  # the item's position within the job
    attempt: int  # 1 for the first run of the chunk
    final: bool  # False: the chunk was retried after this failure
    worker: str
    host: str
    kind: str  # a FailureKind value
    type: str
    message: str
    item: str
    traceback: str
    time: float  # wall-clock time the master recorded it


class WorkerView(TypedDict):
    """One connected worker (seen within the lease timeout)."""

    name: str
    host: str
    last_heartbeat_age_s: float
    chunks_done: int
    items_done: int
    leased: int
    job_packages: dict[str, str]  # its taskfleet.jobs distributions: name → version


class TLSView(TypedDict, total=False):
    """The master's TLS in ``status``: ``enabled`` always; the rest only when it is on.

    ``cert_*``: the master's own certificate (``not_after`` as ISO 8601 UTC,
    days left, the names it is valid for); ``ca_*``: the cluster CA's.
    """

    enabled: bool
    cert_not_after: str
    cert_days_left: float
    cert_names: list[str]
    ca_not_after: str
    ca_days_left: float


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
    tls: TLSView
    lease_timeout_s: float
    journal: JournalView
    process: ProcessView
    http: str | None  # HOST:PORT of the HTTP server (metrics, dashboard), None when off


class StatusView(TypedDict):
    """``status``: the document behind ``taskfleet status --json`` (docs/interfaces.md).

    ``jobs`` lists every pending or running job and the most recent finished
    ones (``defaults.STATUS_FINISHED_JOBS``); ``jobs_not_listed`` counts the
    older finished jobs left out (``jobs`` lists them). ``taskfleet status --json``
    and ``/api/status`` add the verdict: ``healthy`` and ``problems``
    (:mod:`taskfleet.health`).
    """

    master: MasterView
    workers: list[WorkerView]
    lost_workers: list[LostWorkerView]
    jobs: list[JobView]
    jobs_not_listed: int
    jobs_by_state: dict[str, int]  # every job the master keeps, listed or not, by state


# -- typed calls ---------------------------------------------------------------------------


class Caller(Protocol):
    """Anything that sends one call to the board and returns its value (a Session).

    ``timeout`` bounds one attempt; ``deadline`` (a ``time.monotonic()`` value) the
    whole call, reconnects included: past it the call raises TimeoutError.
    """

    def call(
        self, method: str, *args: Any, timeout: float | None = None, deadline: float | None = None
    ) -> Any: ...


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

    def hello(
        self,
        role: Role,
        name: str,
        host: str = "",
        processes: int = 0,
        job_packages: dict[str, str] | None = None,
    ) -> HelloReply:
        reply: HelloReply = self._caller.call(
            Method.HELLO.value,
            PROTOCOL_VERSION,
            role.value,
            name,
            host,
            processes,
            dict(job_packages or {}),
        )
        return reply

    def ping(self, *, deadline: float | None = None) -> PingReply:
        reply: PingReply = self._caller.call(Method.PING.value, deadline=deadline)
        return reply

    # -- workers

    def heartbeat(self, worker: str, host: str, held: Sequence[ChunkId]) -> list[ChunkId]:
        """Extend the leases of ``held``; returns those the worker should stop
        (their job was cancelled, failed or is gone, or another worker finished them)."""
        stop = self._caller.call(Method.HEARTBEAT.value, worker, host, wire(held))
        return [ChunkId._make(c) for c in stop or ()]

    def exchange(
        self,
        worker: str,
        host: str,
        results: Sequence[Result],
        want: int,
        wait: float,
        held: Sequence[ChunkId] = (),
        *,
        timeout: float | None = None,
    ) -> tuple[Ack, list[Lease], list[ChunkId]]:
        """complete + lease in one round trip; also says which ``held`` chunks to stop."""
        ack, leases, stop = self._caller.call(
            Method.EXCHANGE.value,
            worker,
            host,
            [r.to_wire() for r in results],
            want,
            wait,
            wire(held),
            timeout=timeout,
        )
        return ack, [Lease._make(t) for t in leases], [ChunkId._make(c) for c in stop]

    def complete(self, worker: str, host: str, results: Sequence[Result]) -> Ack:
        ack: Ack = self._caller.call(
            Method.COMPLETE.value, worker, host, [r.to_wire() for r in results]
        )
        return ack

    def goodbye(self, worker: str, held: Sequence[ChunkId]) -> int:
        return int(self._caller.call(Method.GOODBYE.value, worker, wire(held)))

    # -- clients

    def submit(
        self,
        job_id: str,
        job: str,
        chunk_size: int,
        start: int = 0,
        stop: int = 0,
        items: Sequence[Any] | None = None,
        step: int = 1,
        options: JobOptions | None = None,
        *,
        timeout: float | None = None,
        deadline: float | None = None,
    ) -> SubmitReply:
        reply: SubmitReply = self._caller.call(
            Method.SUBMIT.value,
            job_id,
            job,
            chunk_size,
            start,
            stop,
            None if items is None else list(items),
            step,
            options,
            timeout=timeout,
            deadline=deadline,
        )
        return reply

    def open(
        self,
        job_id: str,
        job: str,
        chunk_size: int,
        options: JobOptions | None = None,
        *,
        deadline: float | None = None,
    ) -> UploadReply:
        reply: UploadReply = self._caller.call(
            Method.OPEN.value, job_id, job, chunk_size, options, deadline=deadline
        )
        return reply

    def append(
        self,
        job_id: str,
        seq: int,
        items: Sequence[Any],
        *,
        timeout: float | None = None,
        deadline: float | None = None,
    ) -> UploadReply:
        reply: UploadReply = self._caller.call(
            Method.APPEND.value, job_id, seq, list(items), timeout=timeout, deadline=deadline
        )
        return reply

    def seal(self, job_id: str, n_items: int, *, deadline: float | None = None) -> SubmitReply:
        reply: SubmitReply = self._caller.call(
            Method.SEAL.value, job_id, n_items, deadline=deadline
        )
        return reply

    def job(self, job_id: str, *, deadline: float | None = None) -> tuple[SpecWire, JobView]:
        spec, view = self._caller.call(Method.JOB.value, job_id, deadline=deadline)
        return spec, view

    def jobs(self, limit: int) -> JobList:
        reply: JobList = self._caller.call(Method.JOBS.value, limit)
        return reply

    def wait(
        self, job_id: str, wait: float, *, timeout: float, deadline: float | None = None
    ) -> JobView:
        view: JobView = self._caller.call(
            Method.WAIT.value, job_id, wait, timeout=timeout, deadline=deadline
        )
        return view

    def fetch(
        self,
        job_id: str,
        after_seq: int,
        max_items: int,
        wait: float,
        items: bool = False,
        *,
        timeout: float,
        deadline: float | None = None,
    ) -> tuple[list[ResultRow], JobView]:
        rows, view = self._caller.call(
            Method.FETCH.value,
            job_id,
            after_seq,
            max_items,
            wait,
            items,
            timeout=timeout,
            deadline=deadline,
        )
        return [ResultRow(*r) for r in rows], view

    def fetch_ordered(
        self,
        job_id: str,
        from_chunk: int,
        max_items: int,
        wait: float,
        items: bool = False,
        *,
        timeout: float,
        deadline: float | None = None,
    ) -> tuple[list[ResultRow], JobView]:
        rows, view = self._caller.call(
            Method.FETCH_ORDERED.value,
            job_id,
            from_chunk,
            max_items,
            wait,
            items,
            timeout=timeout,
            deadline=deadline,
        )
        return [ResultRow(*r) for r in rows], view

    def errors(self, job_id: str, limit: int) -> list[ErrorView]:
        reply: list[ErrorView] = self._caller.call(Method.ERRORS.value, job_id, limit)
        return reply

    def cancel(self, job_id: str) -> JobView:
        view: JobView = self._caller.call(Method.CANCEL.value, job_id)
        return view

    def status(self, *, deadline: float | None = None) -> StatusView:
        view: StatusView = self._caller.call(Method.STATUS.value, deadline=deadline)
        return view

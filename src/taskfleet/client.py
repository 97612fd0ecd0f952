"""The Python API: :class:`Client` (a connection to the master) and :class:`Job` (one job).

``taskfleet.connect()`` (:mod:`taskfleet.api`) makes a Client from options, a
profile or the environment; ``docs/api.md`` is the user's guide.

Results are read from the master's journal, so a reader can start, stop and
start again at any time, from any process, until retention prunes the job:

* in input order (:meth:`Job.results`, ``Client.map``): fetched *by chunk
  index* — the reader asks for chunk k, k+1, … and holds one reply at a time,
  so memory stays bounded however slow one chunk is and however many items
  the job has;
* in completion order (``ordered=False``): fetched by the journal's sequence
  number, resumed from the last one seen.

Both survive a master restart (the session reconnects with backoff, the
stream resumes where it was) and deliver every chunk exactly once.

Results are decoded with the restricted unpickler and the types the job
declares (the master says which in its submit and job replies): a worker that
holds the key but is compromised cannot run code on this machine through a
result (:mod:`taskfleet.safepickle`). Items must be plain data for the same
reason on the other end.

Item lists are sent the same way, in bounded pieces: :meth:`Client.submit`
reads the items batch by batch (``defaults.UPLOAD_BATCH_ITEMS``, whole
chunks) and uploads them (``open``/``append``/``seal``), so a generator over a
file larger than memory can be submitted; an item list job's items come back
from the master with their results, chunk by chunk.
"""

from __future__ import annotations

import contextlib
import dataclasses
import itertools
import os
import pickle
import secrets
import socket
import threading
import time
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass
from typing import Any, NamedTuple

from taskfleet import defaults, safepickle
from taskfleet.board import JobSpec
from taskfleet.errors import (
    BadJobArguments,
    ItemError,
    JobCancelled,
    JobFailed,
    MasterUnreachable,
    TaskfleetError,
    UnsafeData,
)
from taskfleet.jobs import decode_results
from taskfleet.manager import Session
from taskfleet.protocol import (
    BoardStub,
    ErrorView,
    JobOptions,
    JobState,
    JobView,
    Method,
    OnError,
    PingReply,
    ResultRow,
    Role,
    StatusView,
    SubmitReply,
)
from taskfleet.tls import TLSConfig

UPLOAD_CALL_TIMEOUT = 120.0
"""Seconds one batch of an upload may take: the master validates, pickles and journals it."""

UPLOAD_ABORT_TIMEOUT = 3.0
"""Seconds a client spends telling the master to drop an upload that failed on its side."""


@dataclass
class ChunkResult:
    """One chunk of a job's results, with its items and who computed them (an item-list
    job's items come from the master with the results)."""

    index: int
    worker: str
    host: str
    items: Sequence[Any]
    results: list[Any]
    failed: int = 0  # results that are ItemError (on_error="skip")


class Progress(NamedTuple):
    """How far a job is: items done (failed ones included) of ``total``; ``failed``
    items failed for good (skipped ones, or those of the chunk that failed the job)."""

    done: int
    total: int
    failed: int


def _options(retries: int, on_error: str, item_timeout: float | None) -> JobOptions:
    """Check the failure options here too, so bad ones fail before anything is sent."""
    if isinstance(retries, bool) or not isinstance(retries, int) or retries < 0:
        raise BadJobArguments(f"bad retries {retries!r}", "use a whole number >= 0")
    if on_error not in {e.value for e in OnError}:
        raise BadJobArguments(f"bad on_error {on_error!r}", "use 'fail' or 'skip'")
    if item_timeout is not None and not (
        isinstance(item_timeout, int | float) and not isinstance(item_timeout, bool)
    ):
        raise BadJobArguments(f"bad item_timeout {item_timeout!r}", "give seconds, or None")
    return JobOptions(
        retries=retries,
        on_error=on_error,
        item_timeout=None if item_timeout is None else float(item_timeout),
    )


def _grace(deadline: float | None) -> float | None:
    """A caller's deadline as a call's: a long-poll that ends at the deadline still gets
    its answer (``defaults.DEADLINE_GRACE``)."""
    return None if deadline is None else deadline + defaults.DEADLINE_GRACE


def _batches(items: Iterator[Any], size: int, per_batch: int) -> Iterator[tuple[list[Any], bool]]:
    """Batches of whole chunks of ``size`` items, at most ``per_batch`` items each, and
    whether each is the last (the only one whose last chunk may be short). A batch is
    sent early, at a chunk boundary, once ``defaults.UPLOAD_FLUSH`` seconds went by, so
    a slow source keeps its upload alive. Only a first and last batch can be empty."""
    ahead: list[Any] = []  # one item read to learn whether a full batch is the last
    while True:
        batch = ahead
        started = time.monotonic()
        while len(batch) < per_batch:
            want = size - len(batch) % size  # what completes the current chunk
            got = list(itertools.islice(items, want))
            batch.extend(got)
            if len(got) < want:
                yield batch, True
                return
            if time.monotonic() - started > defaults.UPLOAD_FLUSH:
                break
        ahead = list(itertools.islice(items, 1))
        if not ahead:
            yield batch, True
            return
        yield batch, False


def _item_error(view: ErrorView) -> ItemError:
    return ItemError(
        index=view["index"],
        item=view["item"],
        kind=view["kind"],
        type=view["type"],
        message=view["message"],
        traceback=view["traceback"],
        worker=view["worker"],
        host=view["host"],
        chunk=view["chunk"],
        attempt=view["attempt"],
        final=view["final"],
    )


class Client:
    """A connection to the master: submit jobs, follow them, read the cluster's status.

    The first connection must succeed within ``connect_timeout`` seconds
    (MasterUnreachable otherwise); later, a lost master is waited for up to
    ``reconnect_for`` seconds (a restart) before giving up. A context manager:
    ``with taskfleet.connect() as client: …`` closes the connection at the end.
    Calls from several threads are serialized (one connection); use one Client
    per thread to wait on several jobs at once. ``client.board`` is the typed
    wire itself (:class:`taskfleet.protocol.BoardStub`), for tools. ``tls``: the
    cluster's CA and this machine's certificate and key (None: a plaintext
    cluster); every connection the client makes uses it.
    """

    def __init__(
        self,
        address: tuple[str, int],
        authkey: bytes,
        *,
        connect_timeout: float = defaults.CONNECT_TIMEOUT,
        reconnect_for: float = defaults.RECONNECT_FOR,
        call_timeout: float = defaults.CLIENT_CALL_TIMEOUT,
        tls: TLSConfig | None = None,
    ) -> None:
        self.name = f"client-{socket.gethostname()}-{os.getpid()}"
        self._session = Session(
            address,
            authkey,
            self.name,
            timeout=call_timeout,
            give_up=connect_timeout,
            on_connect=self._hello,
            tls=tls,
        )
        self._reconnect_for = reconnect_for
        self._lock = threading.Lock()
        self.board = BoardStub(self)
        # What each job's results may hold besides plain data (the master says).
        self._result_types: dict[str, frozenset[safepickle.Global]] = {}

    def _hello(self, session: Session) -> None:
        BoardStub(session.once).hello(Role.CLIENT, self.name)

    @property
    def where(self) -> str:
        """The master's address, HOST:PORT."""
        return self._session.where

    @property
    def call_timeout(self) -> float:
        return self._session.timeout

    def call(
        self, method: str, *args: Any, timeout: float | None = None, deadline: float | None = None
    ) -> Any:
        """One call through the session; once connected, a lost master is waited for longer.

        ``deadline`` (a ``time.monotonic()`` value) bounds the call, reconnects included
        (TimeoutError past it)."""
        with self._lock:
            result = self._session.call(method, *args, timeout=timeout, deadline=deadline)
            self._session.give_up = self._reconnect_for
            return result

    def close(self) -> None:
        """Close the connection (a later call opens a new one)."""
        with self._lock:
            self._session.close()

    def __enter__(self) -> Client:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def note_result_types(self, job_id: str, declared: Sequence[str]) -> None:
        """Remember what job ``job_id`` declares its results may hold (from the master).

        Raises UnsafeData when the master's list is malformed.
        """
        try:
            self._result_types[job_id] = safepickle.results_allowlist(declared)
        except (TypeError, ValueError):
            raise UnsafeData(
                f"the master sent malformed result types for job {job_id}: {declared!r}",
                "run the same taskfleet version on the master and this machine",
            ) from None

    def result_allowlist(self, job_id: str) -> frozenset[safepickle.Global]:
        """What job ``job_id``'s result blobs may hold (asks the master once)."""
        allowed = self._result_types.get(job_id)
        if allowed is None:
            spec, _ = self.board.job(job_id)
            self.note_result_types(job_id, spec.get("result_types", []))
            allowed = self._result_types[job_id]
        return allowed

    def ping(self, deadline: float | None = None) -> PingReply:
        """The master's address and version (``deadline``: a ``time.monotonic()`` value
        by which it must answer, else TimeoutError)."""
        return self.board.ping(deadline=deadline)

    def status(self, deadline: float | None = None) -> StatusView:
        """The master's view: workers, running and recent jobs (``taskfleet status --json``);
        ``deadline`` as for :meth:`ping`."""
        return self.board.status(deadline=deadline)

    # -- jobs ------------------------------------------------------------------------------

    def submit(
        self,
        job: str,
        items: Iterable[Any],
        *,
        chunk_size: int | None = None,
        retries: int = defaults.RETRIES,
        on_error: str = defaults.ON_ERROR,
        item_timeout: float | None = None,
        timeout: float | None = None,
    ) -> Job:
        """Submit ``job`` over ``items`` and return its :class:`Job` once the master has
        journaled it.

        ``job`` names a function (``squares``, ``package.module:function`` or a
        ``taskfleet.jobs`` entry point); ``items`` is a ``range`` (sent as a
        range, never expanded) or any iterable, read and sent in batches of whole
        chunks, so it may be longer than memory (a generator over a file). A
        failed chunk runs again up to ``retries`` times, then ``on_error``
        decides: ``"fail"`` fails the job, ``"skip"`` keeps going and puts an
        :class:`~taskfleet.errors.ItemError` in each failed item's place.
        ``item_timeout`` (seconds) cuts an item that runs longer. ``timeout``
        (seconds) bounds the whole submission (TimeoutError).

        Raises UnknownJob or BadJobArguments (refused by the master, naming the
        item or the limit; nothing was created), MasterUnreachable, TimeoutError.
        """
        size = defaults.CHUNK_SIZE if chunk_size is None else chunk_size
        opts = _options(retries, on_error, item_timeout)
        deadline = None if timeout is None else time.monotonic() + timeout
        # The id is made here, so a retried submit after a lost reply cannot create
        # the job twice.
        job_id = secrets.token_hex(6)
        base = JobSpec(
            job_id,
            job,
            size,
            created=time.time(),
            retries=opts["retries"],
            on_error=opts["on_error"],
            item_timeout=opts["item_timeout"],
        )
        if isinstance(items, range):
            reply = self.board.submit(
                job_id,
                job,
                size,
                items.start,
                items.stop,
                None,
                items.step,
                opts,
                deadline=deadline,
            )
            spec = dataclasses.replace(
                base,
                start=items.start,
                stop=items.stop,
                step=items.step,
                code_version=reply.get("code_version", ""),
            )
        else:
            reply = self._send_items(job_id, job, size, opts, items, deadline)
            spec = dataclasses.replace(
                base, listed=reply["n_items"], code_version=reply.get("code_version", "")
            )
        self.note_result_types(job_id, reply.get("result_types", []))
        return Job(self, job_id, spec=spec)

    def _send_items(
        self,
        job_id: str,
        job: str,
        size: int,
        opts: JobOptions,
        items: Iterable[Any],
        deadline: float | None,
    ) -> SubmitReply:
        """Send an item list: in one ``submit`` when it fits one batch, else as an upload
        (open, append batch after batch, seal). Holds one batch at a time; returns the
        master's reply (the number of items, the code version)."""
        if isinstance(size, bool) or not isinstance(size, int) or size < 1:
            raise BadJobArguments(f"bad chunk size {size!r}", "use a whole number >= 1")
        per_batch = size * max(1, defaults.UPLOAD_BATCH_ITEMS // size)
        batches = _batches(iter(items), size, per_batch)
        first, last = next(batches)
        _check_plain(first)
        if last:  # everything fits one call
            if not first:
                raise BadJobArguments("no items to process", "give at least one item")
            timeout = UPLOAD_CALL_TIMEOUT
            return self.board.submit(
                job_id, job, size, 0, 0, first, 1, opts, timeout=timeout, deadline=deadline
            )
        self.board.open(job_id, job, size, opts, deadline=deadline)
        sent = 0
        try:
            for seq, (batch, _) in enumerate(itertools.chain([(first, last)], batches)):
                if seq:
                    _check_plain(batch)
                self.board.append(
                    job_id, seq, batch, timeout=UPLOAD_CALL_TIMEOUT, deadline=deadline
                )
                sent += len(batch)
            return self.board.seal(job_id, sent, deadline=deadline)
        except BaseException:
            self._abort_upload(job_id)
            raise

    def _abort_upload(self, job_id: str) -> None:
        """Best effort, after an upload failed here (a bad line in the items file, Ctrl-C,
        a timeout): ask the master to drop it now rather than after its idle timeout.
        On a fresh connection: the old one may be in the middle of a call."""
        self.close()
        with contextlib.suppress(Exception):
            self.call(Method.CANCEL.value, job_id, deadline=time.monotonic() + UPLOAD_ABORT_TIMEOUT)

    def map(
        self,
        job: str,
        items: Iterable[Any],
        *,
        chunk_size: int | None = None,
        ordered: bool = True,
        retries: int = defaults.RETRIES,
        on_error: str = defaults.ON_ERROR,
        item_timeout: float | None = None,
        timeout: float | None = None,
    ) -> Iterator[Any]:
        """Run ``job`` over ``items`` on the cluster; iterate over the results.

        Submits at once (the arguments of :meth:`submit`; items are sent in
        batches) and returns an iterator: results in input order
        (``ordered=False``: as chunks complete), one reply of the master in
        memory at a time. Leaving the loop early (``break``, an exception)
        cancels the job. Raises JobFailed when the job fails, JobCancelled,
        TimeoutError after ``timeout`` seconds (the submission included).
        """
        started = time.monotonic()
        handle = self.submit(
            job,
            items,
            chunk_size=chunk_size,
            retries=retries,
            on_error=on_error,
            item_timeout=item_timeout,
            timeout=timeout,
        )
        left = None if timeout is None else max(0.0, timeout - (time.monotonic() - started))
        return handle._iterate(ordered, left, cancel_on_exit=True)

    def job(self, job_id: str, *, deadline: float | None = None) -> Job:
        """The job ``job_id`` (from any process, while the master keeps it).

        Raises JobNotFound when the master has no such job (or pruned it).
        """
        spec, view = self.board.job(job_id, deadline=deadline)
        self.note_result_types(job_id, spec.get("result_types", []))
        return Job(self, job_id, spec=JobSpec.from_wire(spec), view=view)

    def jobs(self, limit: int = defaults.JOBS_LIMIT) -> list[Job]:
        """The newest ``limit`` jobs, newest first."""
        return [Job(self, v["id"], view=v) for v in self.board.jobs(limit)["jobs"]]


class Job:
    """A handle on one job. Cheap: it holds the job's id; every question asks the master.

    ``state``, :meth:`progress`, :meth:`wait`, :meth:`results` …  work the same
    from the process that submitted the job and from any other one
    (``client.job(job_id)``).
    """

    def __init__(
        self,
        client: Client,
        job_id: str,
        *,
        spec: JobSpec | None = None,
        view: JobView | None = None,
    ) -> None:
        self._client = client
        self.id = job_id
        self._spec = spec
        self._view = view
        #: chunks a completion-order stream saw twice and dropped
        self.duplicates = 0

    def __repr__(self) -> str:
        state = self._view["state"] if self._view else "?"
        return f"<Job {self.id} {self.name} {state}>"

    @property
    def spec(self) -> JobSpec:
        """What was submitted (asked once)."""
        if self._spec is None:
            wire_spec = self._client.board.job(self.id)[0]
            self._client.note_result_types(self.id, wire_spec.get("result_types", []))
            self._spec = JobSpec.from_wire(wire_spec)
        return self._spec

    @property
    def name(self) -> str:
        """The job's function name, e.g. ``squares``."""
        if self._spec is not None:
            return self._spec.job
        if self._view is not None:
            return self._view["job"]
        return self.spec.job

    def info(self) -> JobView:
        """The master's view of the job now (the ``taskfleet job --json`` document's base)."""
        self._view = self._client.board.job(self.id)[1]
        return self._view

    @property
    def state(self) -> str:
        """``"pending" | "running" | "done" | "failed" | "cancelled"``, now."""
        return self.info()["state"]

    def done(self) -> bool:
        """True once the job is done, failed or cancelled."""
        return JobState(self.state).finished

    def progress(self) -> Progress:
        """Items done (failed ones included), the total, and items failed, now."""
        view = self.info()
        return Progress(view["items_done"], view["items_total"], view.get("items_failed", 0))

    def wait(self, timeout: float | None = None) -> str:
        """Block until the job has finished; return its final state.

        Raises TimeoutError when it is still running after ``timeout`` seconds (or the
        master did not answer within them).
        """
        deadline = None if timeout is None else time.monotonic() + timeout
        while True:
            wait = defaults.MAX_FETCH_WAIT
            if deadline is not None:
                wait = min(wait, max(0.0, deadline - time.monotonic()))
            view = self._client.board.wait(
                self.id,
                wait,
                timeout=self._client.call_timeout + wait,
                deadline=_grace(deadline),
            )
            self._view = view
            if JobState(view["state"]).finished:
                return view["state"]
            if deadline is not None and time.monotonic() >= deadline:
                raise TimeoutError(
                    f"job {self.id} still {view['state']} after {timeout:g}s"
                    f" ({view['items_done']}/{view['items_total']} items)"
                )

    def cancel(self) -> bool:
        """Cancel the job: nothing more is handed out, workers stop its chunks, later
        results are dropped. True when it is cancelled now; False when it had already
        finished (done or failed)."""
        self._view = self._client.board.cancel(self.id)
        return self._view["state"] == JobState.CANCELLED

    def errors(self, limit: int = defaults.MAX_JOB_ERRORS) -> list[ItemError]:
        """The job's item failures with their remote tracebacks, oldest first.

        Every failed attempt is listed (``final=False``: the chunk ran again
        afterwards); at most ``defaults.MAX_JOB_ERRORS`` are kept per job.
        """
        return [_item_error(v) for v in self._client.board.errors(self.id, limit)]

    def results(self, timeout: float | None = None) -> Iterator[Any]:
        """The results in input order, as they become available (also after the job
        finished). With ``on_error="skip"`` a failed item's result is an
        :class:`~taskfleet.errors.ItemError`.

        Raises JobFailed (with the failure that decided it) or JobCancelled at
        the first result that will never come, TimeoutError after ``timeout``
        seconds.
        """
        return self._iterate(True, timeout, cancel_on_exit=False)

    def result(self, timeout: float | None = None) -> list[Any]:
        """Every result in input order, as a list (see :meth:`results`)."""
        return list(self.results(timeout))

    def _iterate(
        self, ordered: bool, timeout: float | None, *, cancel_on_exit: bool
    ) -> Iterator[Any]:
        """The results alone (an item-list job's items do not travel)."""
        # Items flow through C (chain over each chunk's list); Python runs once per chunk.
        return itertools.chain.from_iterable(
            self._result_lists(ordered, timeout, cancel_on_exit=cancel_on_exit)
        )

    def _result_lists(
        self, ordered: bool, timeout: float | None, *, cancel_on_exit: bool
    ) -> Iterator[list[Any]]:
        finished = False
        try:
            for chunk in self._chunks(ordered, timeout, with_items=False):
                yield chunk.results
            finished = True
        finally:
            if cancel_on_exit and not finished:
                # The caller left early (or the stream failed): do not keep the fleet busy.
                # Best effort: this may run while the iterator is garbage-collected.
                with contextlib.suppress(Exception):
                    self._client.board.cancel(self.id)

    def chunks(
        self, *, ordered: bool = True, timeout: float | None = None
    ) -> Iterator[ChunkResult]:
        """The results chunk by chunk, with their items and the worker and host that
        computed them; in input order, or (``ordered=False``) as they complete."""
        return self._chunks(ordered, timeout, with_items=True)

    def _chunks(
        self, ordered: bool, timeout: float | None, *, with_items: bool
    ) -> Iterator[ChunkResult]:
        """``chunks``; ``with_items=False`` leaves an item-list job's items out
        (``ChunkResult.items`` is then empty): results alone travel."""
        if ordered:
            return self._ordered_chunks(timeout, with_items)
        return self._completed_chunks(timeout, with_items)

    # -- streams ----------------------------------------------------------------------------

    def _deadline_wait(self, deadline: float | None, done: int, total: int) -> float:
        wait = defaults.FETCH_WAIT
        if deadline is not None:
            left = deadline - time.monotonic()
            if left <= 0:
                raise TimeoutError(f"job {self.id}: {done}/{total} chunks received in time")
            wait = min(wait, left)
        return wait

    def _decode(self, row: ResultRow) -> ChunkResult:
        spec = self.spec
        items: Sequence[Any] = ()
        if spec.listed is None:
            items = spec.chunk_range(row.chunk)
        elif row.items is not None:
            items = safepickle.loads(row.items, safepickle.PLAIN)  # plain data, like every item
        try:
            results = decode_results(row.blob, self._client.result_allowlist(self.id))
        except safepickle.UnsafePickle as exc:
            raise UnsafeData(
                f"refused the results of chunk {row.chunk} of job {self.id} from worker"
                f" {row.worker} on {row.host}: they name {exc.name}, which is neither plain"
                f" data nor a type job {spec.job!r} declares",
                "if the job returns that type, declare it (taskfleet.jobs.result_types);"
                " otherwise that worker is misbehaving or compromised: stop it and check it",
            ) from None
        except Exception as exc:
            raise TaskfleetError(
                f"cannot read the results of chunk {row.chunk} of job {self.id}:"
                f" {type(exc).__name__}: {exc}",
                "install the job's package where you read results (its result types"
                " must be importable here)",
            ) from None
        if row.failed:
            offset = row.chunk * spec.chunk_size
            results = [
                dataclasses.replace(r, index=offset + r.index, chunk=row.chunk)
                if isinstance(r, ItemError)
                else r
                for r in results
            ]
        return ChunkResult(row.chunk, row.worker, row.host, items, results, row.failed)

    def _ended(self, view: JobView) -> None:
        """Raise when the job failed or was cancelled: the rest will never come."""
        self._view = view
        if view["state"] == JobState.FAILED:
            raise self.failure(view)
        if view["state"] == JobState.CANCELLED:
            raise JobCancelled(
                f"job {self.id} was cancelled ({view['items_done']}/{view['items_total']}"
                " items were done)",
                "submit it again to run it",
            )

    def failure(self, view: JobView | None = None) -> JobFailed:
        """The JobFailed for this (failed) job, with the failure that decided it."""
        view = view or self.info()
        error: ItemError | None = None
        try:
            finals = [e for e in self.errors() if e.final]
            error = finals[0] if finals else None
        except TaskfleetError:
            pass
        return JobFailed(
            f"job {self.id} failed: {view.get('error', 'a chunk failed')}",
            f"see the traceback with: taskfleet job {self.id}",
            error,
        )

    def _ordered_chunks(self, timeout: float | None, with_items: bool) -> Iterator[ChunkResult]:
        spec = self.spec
        deadline = None if timeout is None else time.monotonic() + timeout
        board = self._client.board
        following = 0
        while following < spec.n_chunks:
            wait = self._deadline_wait(deadline, following, spec.n_chunks)
            rows, view = board.fetch_ordered(
                self.id,
                following,
                defaults.FETCH_MAX_ITEMS,
                wait,
                with_items,
                timeout=self._client.call_timeout + wait,
                deadline=_grace(deadline),
            )
            for row in rows:
                if row.chunk != following:  # the master returns a gap-free run
                    break
                following += 1
                yield self._decode(row)
            if not rows:
                self._ended(view)

    def _completed_chunks(self, timeout: float | None, with_items: bool) -> Iterator[ChunkResult]:
        spec = self.spec
        deadline = None if timeout is None else time.monotonic() + timeout
        board = self._client.board
        seen = bytearray(spec.n_chunks)
        received = 0
        after = 0
        while received < spec.n_chunks:
            wait = self._deadline_wait(deadline, received, spec.n_chunks)
            rows, view = board.fetch(
                self.id,
                after,
                defaults.FETCH_MAX_ITEMS,
                wait,
                with_items,
                timeout=self._client.call_timeout + wait,
                deadline=_grace(deadline),
            )
            for row in rows:
                after = max(after, row.seq)
                if seen[row.chunk]:
                    self.duplicates += 1
                    continue
                seen[row.chunk] = 1
                received += 1
                yield self._decode(row)
            if not rows:
                self._ended(view)


def _check_plain(items: list[Any]) -> None:
    """Items are plain data (the master and the workers admit nothing else): refuse others
    here, in one line, rather than have the master drop the connection."""
    try:
        safepickle.loads(pickle.dumps(items, protocol=pickle.HIGHEST_PROTOCOL), safepickle.PLAIN)
    except safepickle.UnsafePickle as exc:
        raise BadJobArguments(
            f"an item is a {exc.name}; items must be plain data (None, bool, int, float,"
            " complex, str, bytes and lists, tuples, dicts and sets of them)",
            "pass plain data and build objects inside the job function",
        ) from None
    except (pickle.PicklingError, TypeError, AttributeError) as exc:
        raise BadJobArguments(
            f"an item cannot be sent ({exc})", "pass plain data (numbers, strings, lists)"
        ) from None


__all__ = ["ChunkResult", "Client", "Job", "MasterUnreachable", "Progress"]

"""Client API: submit jobs, stream their results, read the master's status.

``Client.results`` resumes from the last journal sequence number it saw, so
a client waiting on a job survives a master restart (it reconnects with
backoff) and still receives every chunk exactly once.

Results are decoded with the restricted unpickler and the types the job
declares (the master says which at submit): a compromised worker cannot run
code on this machine through a result (:mod:`taskfleet.safepickle`).
"""

from __future__ import annotations

import os
import pickle
import secrets
import socket
import time
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from typing import Any

from taskfleet import defaults, safepickle
from taskfleet.board import JobSpec
from taskfleet.errors import JobFailed, MasterUnreachable, UnsafeData, UsageError
from taskfleet.manager import Session
from taskfleet.protocol import BoardStub, JobState, JobView, PingReply, Role, StatusView
from taskfleet.tls import TLSConfig

# Items per fetch reply: about 200 chunks of the default size.
FETCH_MAX_ITEMS = 200_000
# A submit of many items is one message the master validates and journals whole.
SUBMIT_ITEMS_TIMEOUT = 120.0


@dataclass
class ChunkResult:
    index: int
    worker: str
    host: str
    items: Sequence[Any]
    results: list[Any]


class Client:
    """A connection to the master for submitting and waiting.

    The first connection must succeed within ``connect_timeout`` seconds
    (MasterUnreachable otherwise); later, a lost master is waited for up to
    ``reconnect_for`` seconds (a restart) before giving up. ``tls``: the
    cluster's CA and this machine's certificate and key (None: plaintext).
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
        self._board = BoardStub(self)
        self.duplicates = 0
        # What each job's results may hold besides plain data (from the master).
        self._result_types: dict[str, frozenset[safepickle.Global]] = {}

    def _hello(self, session: Session) -> None:
        BoardStub(session.once).hello(Role.CLIENT, self.name)

    @property
    def where(self) -> str:
        return self._session.where

    def call(self, method: str, *args: Any, timeout: float | None = None) -> Any:
        """One call through the session; once connected, a lost master is waited for longer."""
        result = self._session.call(method, *args, timeout=timeout)
        self._session.give_up = self._reconnect_for
        return result

    def close(self) -> None:
        self._session.close()

    def ping(self) -> PingReply:
        return self._board.ping()

    def status(self) -> StatusView:
        return self._board.status()

    def submit(
        self,
        job: str,
        *,
        n: int | None = None,
        items: Sequence[Any] | None = None,
        chunk_size: int = defaults.CHUNK_SIZE,
    ) -> JobSpec:
        """Submit ``job`` over range(n) or ``items``; return its spec (with the id).

        The id is made here, so retrying after a lost reply cannot create the
        job twice.
        """
        job_id = secrets.token_hex(6)
        if items is not None:
            listed = list(items)
            _check_plain(listed)
            reply = self._board.submit(
                job_id, job, chunk_size, items=listed, timeout=SUBMIT_ITEMS_TIMEOUT
            )
            spec = JobSpec(job_id, job, chunk_size, items=listed)
        else:
            reply = self._board.submit(job_id, job, chunk_size, 0, int(n or 0))
            spec = JobSpec(job_id, job, chunk_size, 0, int(n or 0))
        self._note_types(job_id, reply.get("result_types", []))
        return spec

    def job(self, job_id: str) -> tuple[JobSpec, JobView]:
        spec, view = self._board.job(job_id)
        self._note_types(job_id, spec.get("result_types", []))
        return JobSpec.from_wire(spec), view

    def _note_types(self, job_id: str, declared: Sequence[str]) -> None:
        try:
            self._result_types[job_id] = safepickle.results_allowlist(declared)
        except (TypeError, ValueError):
            raise UnsafeData(
                f"the master sent malformed result types for job {job_id}: {declared!r}",
                "run the same taskfleet version on the master and this machine",
            ) from None

    def _decode(self, spec: JobSpec, index: int, worker: str, host: str, blob: bytes) -> Any:
        """One chunk's results, admitting only plain data and what the job declares."""
        allowed = self._result_types.get(spec.id)
        if allowed is None:
            self.job(spec.id)
            allowed = self._result_types[spec.id]
        try:
            return safepickle.loads(blob, allowed)
        except safepickle.UnsafePickle as exc:
            raise UnsafeData(
                f"refused the results of chunk {index} of job {spec.id} from worker {worker}"
                f" on {host}: they name {exc.name}, which is neither plain data nor a type"
                f" job {spec.job!r} declares",
                "if the job returns that type, declare it (taskfleet.jobs.result_types);"
                " otherwise that worker is misbehaving or compromised: stop it and check it",
            ) from None
        except ImportError as exc:
            raise UnsafeData(
                f"cannot decode the results of job {spec.id}: {exc}",
                f"install the package of job {spec.job!r} on this machine",
            ) from None

    def results(self, spec: JobSpec, timeout: float | None = None) -> Iterator[ChunkResult]:
        """Yield each chunk's results once, in completion order, until the job is done.

        Raises JobFailed if a job function failed, MasterUnreachable when the
        master stays away, TimeoutError after ``timeout`` seconds.
        """
        deadline = None if timeout is None else time.monotonic() + timeout
        seen = bytearray(spec.n_chunks)
        received = 0
        after = 0
        while received < spec.n_chunks:
            wait = defaults.FETCH_WAIT
            if deadline is not None:
                left = deadline - time.monotonic()
                if left <= 0:
                    raise TimeoutError(f"{received}/{spec.n_chunks} chunks after {timeout:g}s")
                wait = min(wait, left)
            rows, state = self._board.fetch(
                spec.id, after, FETCH_MAX_ITEMS, wait, timeout=self._session.timeout + wait
            )
            for seq, index, worker, host, blob in rows:
                after = max(after, seq)
                if seen[index]:
                    self.duplicates += 1
                    continue
                seen[index] = 1
                received += 1
                results = self._decode(spec, index, worker, host, blob)
                yield ChunkResult(index, worker, host, spec.chunk_items(index), results)
            if state["state"] == JobState.FAILED:
                raise JobFailed(
                    f"job {spec.id} failed: {state.get('error', 'a job function raised')}",
                    "fix the job function (see the worker's log) and submit again",
                )


def _check_plain(items: list[Any]) -> None:
    """Items are plain data (the master and the workers admit nothing else): refuse others
    here, in one line, rather than have the master drop the connection."""
    try:
        safepickle.loads(pickle.dumps(items, protocol=pickle.HIGHEST_PROTOCOL), safepickle.PLAIN)
    except safepickle.UnsafePickle as exc:
        raise UsageError(
            f"an item is a {exc.name}; items must be plain data (None, bool, int, float,"
            " complex, str, bytes and lists, tuples, dicts and sets of them)",
            "pass plain data and build objects inside the job function",
        ) from None
    except (pickle.PicklingError, TypeError, AttributeError) as exc:
        raise UsageError(
            f"an item cannot be sent ({exc})", "pass plain data (numbers, strings, lists)"
        ) from None


__all__ = ["ChunkResult", "Client", "MasterUnreachable"]

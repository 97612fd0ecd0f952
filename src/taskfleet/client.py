"""Client API: submit jobs, stream their results, read the master's status.

``Client.results`` resumes from the last journal sequence number it saw, so
a client waiting on a job survives a master restart (it reconnects with
backoff) and still receives every chunk exactly once.
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

from taskfleet import defaults
from taskfleet.board import JobSpec
from taskfleet.errors import JobFailed, MasterUnreachable
from taskfleet.manager import Session
from taskfleet.protocol import BoardStub, JobState, JobView, PingReply, Role, StatusView

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
    ``reconnect_for`` seconds (a restart) before giving up.
    """

    def __init__(
        self,
        address: tuple[str, int],
        authkey: bytes,
        *,
        connect_timeout: float = defaults.CONNECT_TIMEOUT,
        reconnect_for: float = defaults.RECONNECT_FOR,
        call_timeout: float = defaults.CLIENT_CALL_TIMEOUT,
    ) -> None:
        self.name = f"client-{socket.gethostname()}-{os.getpid()}"
        self._session = Session(
            address,
            authkey,
            self.name,
            timeout=call_timeout,
            give_up=connect_timeout,
            on_connect=self._hello,
        )
        self._reconnect_for = reconnect_for
        self._board = BoardStub(self)
        self.duplicates = 0

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
            self._board.submit(job_id, job, chunk_size, items=listed, timeout=SUBMIT_ITEMS_TIMEOUT)
            return JobSpec(job_id, job, chunk_size, items=listed)
        self._board.submit(job_id, job, chunk_size, 0, int(n or 0))
        return JobSpec(job_id, job, chunk_size, 0, int(n or 0))

    def job(self, job_id: str) -> tuple[JobSpec, JobView]:
        spec, view = self._board.job(job_id)
        return JobSpec.from_wire(spec), view

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
                yield ChunkResult(index, worker, host, spec.chunk_items(index), pickle.loads(blob))
            if state["state"] == JobState.FAILED:
                raise JobFailed(
                    f"job {spec.id} failed: {state.get('error', 'a job function raised')}",
                    "fix the job function (see the worker's log) and submit again",
                )


__all__ = ["ChunkResult", "Client", "MasterUnreachable"]

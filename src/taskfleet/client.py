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

from taskfleet.board import JobSpec
from taskfleet.errors import JobFailed, MasterUnreachable
from taskfleet.manager import Session

FETCH_WAIT = 1.0


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
        connect_timeout: float = 10.0,
        reconnect_for: float = 120.0,
        call_timeout: float = 30.0,
    ) -> None:
        name = f"client-{socket.gethostname()}-{os.getpid()}"
        self._session = Session(
            address, authkey, name, timeout=call_timeout, give_up=connect_timeout
        )
        self._reconnect_for = reconnect_for
        self.duplicates = 0

    @property
    def where(self) -> str:
        return self._session.where

    def call(self, method: str, *args: Any, timeout: float | None = None) -> Any:
        result = self._session.call(method, *args, timeout=timeout)
        self._session.give_up = self._reconnect_for
        return result

    def close(self) -> None:
        self._session.close()

    def ping(self) -> dict[str, Any]:
        return dict(self.call("ping"))

    def status(self) -> dict[str, Any]:
        return dict(self.call("status"))

    def submit(
        self,
        job: str,
        *,
        n: int | None = None,
        items: Sequence[Any] | None = None,
        chunk_size: int = 1000,
    ) -> JobSpec:
        """Submit ``job`` over range(n) or ``items``; return its spec (with the id).

        The id is made here, so retrying after a lost reply cannot create the
        job twice.
        """
        job_id = secrets.token_hex(6)
        if items is not None:
            self.call("submit", job_id, job, chunk_size, 0, 0, list(items), timeout=120.0)
            return JobSpec(job_id, job, chunk_size, items=list(items))
        self.call("submit", job_id, job, chunk_size, 0, int(n or 0), None)
        return JobSpec(job_id, job, chunk_size, 0, int(n or 0))

    def job(self, job_id: str) -> tuple[JobSpec, dict[str, Any]]:
        spec, state = self.call("job", job_id)
        return spec, state

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
            wait = FETCH_WAIT
            if deadline is not None:
                left = deadline - time.monotonic()
                if left <= 0:
                    raise TimeoutError(f"{received}/{spec.n_chunks} chunks after {timeout:g}s")
                wait = min(wait, left)
            rows, state = self.call(
                "fetch", spec.id, after, 200_000, wait, timeout=self._session.timeout + wait
            )
            for seq, index, worker, host, blob in rows:
                after = max(after, seq)
                if seen[index]:
                    self.duplicates += 1
                    continue
                seen[index] = 1
                received += 1
                yield ChunkResult(index, worker, host, spec.chunk_items(index), pickle.loads(blob))
            if state["state"] == "failed":
                raise JobFailed(
                    f"job {spec.id} failed: {state.get('error', 'a job function raised')}",
                    "fix the job function (see the worker's log) and submit again",
                )


__all__ = ["ChunkResult", "Client", "MasterUnreachable"]

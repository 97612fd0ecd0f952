"""The smoke job: squares over range(N), every result checked, every expected worker seen.

``taskfleet smoke``, the deploy's smoke role and ``make fab-smoke`` all run
:func:`run`; its :class:`SmokeReport` is the ``smoke --json`` document
(docs/interfaces.md). Expectations are judged on who really returned
results, not on who was connected.
"""

from __future__ import annotations

import time
from collections import Counter
from dataclasses import asdict, dataclass, field
from typing import Any

from taskfleet import defaults
from taskfleet.client import Client
from taskfleet.errors import TaskfleetError

MIN_CHUNKS = 200
"""The smoke job has at least this many chunks (and 16 per expected worker)."""


def auto_chunk(count: int, expect_workers: int) -> int:
    """A chunk size that gives every expected worker some chunks, never above the default."""
    want_chunks = max(MIN_CHUNKS, 16 * expect_workers)
    return max(1, min(defaults.CHUNK_SIZE, count // want_chunks))


def wait_for_workers(
    client: Client,
    expect_workers: int,
    hosts: list[str],
    deadline: float,
    call_deadline: float | None = None,
) -> list[str]:
    """Before submitting, wait (bounded) until the expected workers are connected.

    Returns what is still missing at ``deadline`` (empty: all there). Each status
    call must be answered by ``call_deadline`` (TimeoutError).
    """
    while True:
        st = client.status(call_deadline)
        names = [w["name"] for w in st["workers"]]
        seen_hosts = {w["host"] for w in st["workers"]}
        problems = []
        if len(names) < expect_workers:
            problems.append(f"{len(names)} workers connected, expected {expect_workers}")
        missing = [h for h in hosts if h not in seen_hosts]
        if missing:
            problems.append(f"no worker connected from {', '.join(missing)}")
        if not problems or time.monotonic() >= deadline:
            return problems
        time.sleep(max(0.0, min(0.5, deadline - time.monotonic())))


@dataclass
class SmokeReport:
    """What a smoke run found; ``ok`` only when every number is right and everyone took part."""

    ok: bool
    job_id: str
    count: int
    verified: int
    missing: int
    wrong: int
    duplicates: int
    workers: dict[str, int]
    hosts: dict[str, int]
    seconds: float
    items_per_s: float | None
    chunk_size: int
    errors: list[str] = field(default_factory=list)

    def as_json(self) -> dict[str, Any]:
        return asdict(self)


def run(
    client: Client,
    count: int,
    *,
    expect_workers: int = 0,
    expect_hosts: list[str] | None = None,
    chunk_size: int | None = None,
    timeout: float = defaults.SMOKE_TIMEOUT,
) -> SmokeReport:
    """Wait for the workers (at most half the timeout), run squares over range(count), verify.

    The whole run ends within ``timeout`` seconds (and a fraction), a master that
    does not answer included: that is an error of the report. Raises TaskfleetError
    when the job cannot be submitted (an unreachable master, a refusal).
    """
    hosts = expect_hosts or []
    t_start = time.monotonic()
    deadline = t_start + timeout
    call_deadline = deadline + defaults.DEADLINE_GRACE
    problems: list[str] = []
    size = chunk_size or auto_chunk(count, max(expect_workers, len(hosts)))
    try:
        # Who is connected only decides when to start; the verdict is on results.
        wait_for_workers(
            client, expect_workers, hosts, min(deadline, t_start + timeout / 2), call_deadline
        )
        t0 = time.monotonic()
        job = client.submit(
            "squares", range(count), chunk_size=size, timeout=max(0.0, deadline - t0)
        )
    except TimeoutError as exc:
        return _timed_out(count, size, timeout, time.monotonic() - t_start, exc)
    verified = wrong = 0
    workers: Counter[str] = Counter()
    by_host: Counter[str] = Counter()
    try:
        remaining = max(0.0, deadline - time.monotonic())
        for chunk in job.chunks(ordered=False, timeout=remaining):
            n = len(chunk.items)
            bad = sum(1 for x, r in zip(chunk.items, chunk.results, strict=False) if r != x * x)
            bad += n - len(chunk.results) if len(chunk.results) < n else 0
            wrong += bad
            verified += n - bad
            workers[chunk.worker] += n
            by_host[chunk.host] += n
    except TimeoutError as exc:
        problems.append(f"timed out after --timeout {timeout:g}s ({exc})")
    except TaskfleetError as exc:  # failed or cancelled
        problems.append(str(exc))
    seconds = time.monotonic() - t0
    missing = count - verified - wrong
    errors = problems
    if expect_workers and len(workers) < expect_workers:
        errors.append(
            f"{len(workers)} workers returned results, expected at least {expect_workers}"
        )
    absent = [h for h in hosts if by_host.get(h, 0) == 0]
    if absent:
        errors.append(f"no results from host(s) {', '.join(absent)}")
    if wrong:
        errors.append(f"{wrong} wrong results")
    if missing:
        errors.append(f"{missing} results missing")
    if job.duplicates:
        errors.append(f"{job.duplicates} duplicate chunks")
    return SmokeReport(
        ok=not errors,
        job_id=job.id,
        count=count,
        verified=verified,
        missing=missing,
        wrong=wrong,
        duplicates=job.duplicates,
        workers=dict(sorted(workers.items())),
        hosts=dict(sorted(by_host.items())),
        seconds=round(seconds, 3),
        items_per_s=round(verified / seconds, 1) if seconds > 0 else None,
        chunk_size=size,
        errors=errors,
    )


def _timed_out(
    count: int, size: int, timeout: float, seconds: float, exc: TimeoutError
) -> SmokeReport:
    """The report of a run whose time ran out before its job was submitted."""
    return SmokeReport(
        ok=False,
        job_id="",
        count=count,
        verified=0,
        missing=count,
        wrong=0,
        duplicates=0,
        workers={},
        hosts={},
        seconds=round(seconds, 3),
        items_per_s=None,
        chunk_size=size,
        errors=[f"timed out after --timeout {timeout:g}s before the job ran ({exc})"],
    )

"""The health verdict: what is wrong with a cluster, read from the master's status.

:func:`assess` takes a status document (``BoardService.status``, as
``taskfleet status --json`` prints it) and returns one line per problem; no
problem means healthy. It is pure: the CLI (``taskfleet status``), the
master's ``/healthz`` and ``/api/status`` and the Fabric ``make status`` all
judge the same document the same way, and the unit tests feed it by hand.

Problems (docs/operations.md):

* fewer workers connected than expected (``--expect-workers K``);
* a worker silent for longer than the lease timeout (it did not say goodbye);
* a job that cannot progress: work left and no connected worker able to run
  it (none at all, or none with the job package it was submitted from);
* a job whose chunks run on other code than it was submitted with: its job
  package is on the workers, but none has the version the master resolved at
  submit (workers run whatever version they have; an upgrade mid-job);
* the journal's file system nearly full;
* a TLS certificate (the master's or the CA's) close to expiry or expired.

Fields the document may lack (an older master, TLS off) are skipped, never
guessed.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

from taskfleet import defaults
from taskfleet.protocol import JobState

#: Job states in which chunks are still handed out (``pending``: submitted, none leased yet).
_ACTIVE = {JobState.RUNNING.value, JobState.PENDING.value}

#: A built-in job's distribution: taskfleet itself, which hello's protocol check covers.
_BUILTIN_DIST = "taskfleet"


def _size(n: float) -> str:
    for unit in ("B", "KiB", "MiB", "GiB", "TiB"):
        if abs(n) < 1024 or unit == "TiB":
            return f"{n:.0f} {unit}" if unit == "B" else f"{n:.1f} {unit}"
        n /= 1024
    raise AssertionError("unreachable")


def _workers_problems(status: Mapping[str, Any], expect_workers: int) -> list[str]:
    problems = []
    workers: Sequence[Mapping[str, Any]] = status.get("workers") or []
    if expect_workers and len(workers) < expect_workers:
        problems.append(
            f"fewer workers than expected: {len(workers)} connected, {expect_workers} expected"
        )
    lease = float((status.get("master") or {}).get("lease_timeout_s") or defaults.LEASE_TIMEOUT)
    silent = [w for w in workers if float(w.get("last_heartbeat_age_s", 0)) > lease]
    silent += list(status.get("lost_workers") or [])
    for w in silent:
        problems.append(
            f"worker {w.get('name', '?')} on {w.get('host', '?')} silent for"
            f" {float(w.get('last_heartbeat_age_s', 0)):.0f}s (lease timeout {lease:g}s):"
            " its chunks went back to pending"
        )
    return problems


def _code_problem(job: Mapping[str, Any], workers: Sequence[Mapping[str, Any]]) -> str | None:
    """Whether the connected workers have the code ``job`` was submitted with.

    A job's ``code_version`` is ``"<distribution> <version>"``; each worker reports its
    job packages, ``{distribution: version}`` (only distributions with ``taskfleet.jobs``
    entry points). A job named by an entry point whose distribution no worker has cannot
    run anywhere; a distribution the workers have at other versions only runs on other
    code. A ``module:function`` owned by a distribution no worker reports is no job
    package: nothing to judge. Built-in jobs and an unknown version are skipped too.
    """
    dist, _, version = str(job.get("code_version") or "").partition(" ")
    if not dist or not version or dist == _BUILTIN_DIST:
        return None
    have = {
        str(v)
        for w in workers
        if isinstance(w.get("job_packages"), Mapping) and (v := w["job_packages"].get(dist))
    }
    if version in have:
        return None
    if have:
        return (
            f"runs on other code: submitted with {dist} {version}, the connected workers"
            f" have {', '.join(sorted(have))}"
        )
    if ":" not in str(job.get("job", "")):
        return f"cannot progress: no connected worker has its job package {dist}"
    return None


def _jobs_problems(status: Mapping[str, Any]) -> list[str]:
    problems = []
    workers: Sequence[Mapping[str, Any]] = status.get("workers") or []
    for job in status.get("jobs") or []:
        if job.get("state") not in _ACTIVE:
            continue
        chunks = job.get("chunks") or {}
        if not (chunks.get("pending", 0) or chunks.get("leased", 0)):
            continue
        name = f"job {job.get('id', '?')} ({job.get('job', '?')})"
        if not workers:
            problems.append(f"{name} cannot progress: no worker is connected")
        elif (problem := _code_problem(job, workers)) is not None:
            problems.append(f"{name} {problem}")
    return problems


def _master_problems(master: Mapping[str, Any]) -> list[str]:
    problems = []
    journal = master.get("journal") or {}
    size = int(journal.get("disk_size_bytes") or 0)
    free = int(journal.get("disk_free_bytes") or 0)
    if size > 0 and free / size < defaults.JOURNAL_DISK_MIN_FREE:
        problems.append(
            f"the journal's disk is nearly full: {_size(free)} of {_size(size)} free"
            f" ({100 * free / size:.1f}%) at {journal.get('path', '?')}"
        )
    tls = master.get("tls") or {}
    for key, what in (("cert", "the master's TLS certificate"), ("ca", "the cluster's TLS CA")):
        days = tls.get(f"{key}_days_left")
        if days is None:
            continue
        when = tls.get(f"{key}_not_after", "?")
        if float(days) <= 0:
            problems.append(f"{what} expired on {when}")
        elif float(days) < defaults.TLS_MIN_DAYS:
            problems.append(f"{what} expires in {float(days):.1f} days ({when})")
    return problems


def assess(status: Mapping[str, Any], expect_workers: int = 0) -> list[str]:
    """Every problem of the cluster ``status`` describes, one line each ([] = healthy).

    ``expect_workers`` > 0 makes fewer connected workers a problem.
    """
    return [
        *_workers_problems(status, expect_workers),
        *_jobs_problems(status),
        *_master_problems(status.get("master") or {}),
    ]


def verdict(status: Mapping[str, Any], expect_workers: int = 0) -> dict[str, Any]:
    """``status`` with the verdict added: ``healthy`` and ``problems`` (the documents of
    ``taskfleet status --json`` and ``/api/status``)."""
    problems = assess(status, expect_workers)
    return {**status, "healthy": not problems, "problems": problems}

"""The master's metrics in the Prometheus text format (version 0.0.4).

:func:`render` is pure: a :class:`~taskfleet.observe.Snapshot`, the live
counters and process figures in, the text of ``/metrics`` out. Names follow
Prometheus' conventions: the ``taskfleet_`` prefix, base units (seconds,
bytes), ``_total`` on counters. Every family is always present, with zero
samples where there is nothing to count, so an alert never depends on a
series that appears only when something happens. docs/metrics.md lists them
with what each means.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

from taskfleet.protocol import JobState

CONTENT_TYPE = "text/plain; version=0.0.4; charset=utf-8"

Labels = Mapping[str, str]


@dataclass
class Family:
    """One metric family: its HELP, TYPE and samples."""

    name: str
    type: str  # "gauge" or "counter"
    help: str
    samples: list[tuple[Labels, float]] = field(default_factory=list)

    def add(self, value: float, **labels: str) -> Family:
        self.samples.append((labels, value))
        return self


@dataclass
class Live:
    """Figures read at scrape time rather than sampled."""

    lease_expiries: int
    failed_attempts: int
    retries: int
    handshakes_refused: int
    cpu_seconds: float
    rss_bytes: int
    start_time: float  # wall-clock time the master started
    threads: int
    open_fds: int | None
    http_requests: Mapping[str, int]  # status code -> requests answered
    http_dropped: Mapping[str, int]  # reason -> connections closed unanswered


def _escape_label(value: str) -> str:
    return value.replace("\\", r"\\").replace("\n", r"\n").replace('"', r"\"")


def _escape_help(text: str) -> str:
    return text.replace("\\", r"\\").replace("\n", r"\n")


def _number(value: float) -> str:
    if isinstance(value, bool):
        return "1" if value else "0"
    if isinstance(value, int):
        return str(value)
    if math.isnan(value):
        return "NaN"
    if math.isinf(value):
        return "+Inf" if value > 0 else "-Inf"
    return repr(float(value))


def format_families(families: Iterable[Family]) -> str:
    """The text format: ``# HELP``, ``# TYPE``, then one line per sample."""
    lines: list[str] = []
    for f in families:
        lines.append(f"# HELP {f.name} {_escape_help(f.help)}")
        lines.append(f"# TYPE {f.name} {f.type}")
        for labels, value in f.samples:
            text = ",".join(f'{k}="{_escape_label(v)}"' for k, v in labels.items())
            lines.append(
                f"{f.name}{{{text}}} {_number(value)}" if text else f"{f.name} {_number(value)}"
            )
    return "\n".join(lines) + "\n"


def _timestamp(iso: str) -> float | None:
    try:
        return datetime.fromisoformat(iso.replace("Z", "+00:00")).timestamp()
    except (ValueError, AttributeError):
        return None


def gauge(name: str, help: str, value: float | None = None, **labels: str) -> Family:
    """A gauge family; with ``value``, its one sample."""
    family = Family(name, "gauge", help)
    return family if value is None else family.add(value, **labels)


def counter(name: str, help: str, value: float | None = None, **labels: str) -> Family:
    """A counter family (its name ends in ``_total``); with ``value``, its one sample."""
    family = Family(name, "counter", help)
    return family if value is None else family.add(value, **labels)


def families(
    status: Mapping[str, Any],
    totals: Mapping[str, int],
    problems: Sequence[str],
    live: Live,
) -> list[Family]:
    """Every metric family of one scrape (see the module docstring)."""
    master = status.get("master") or {}
    workers: Sequence[Mapping[str, Any]] = status.get("workers") or []
    jobs: Sequence[Mapping[str, Any]] = status.get("jobs") or []
    journal = master.get("journal") or {}
    version, address = str(master.get("version", "")), str(master.get("address", ""))

    out = [
        gauge(
            "taskfleet_info",
            "Constant 1, labelled with the master's version and address.",
            1,
            version=version,
            address=address,
        ),
        gauge(
            "taskfleet_healthy",
            "1 when the health verdict finds no problem, else 0.",
            0 if problems else 1,
        ),
        gauge(
            "taskfleet_problems",
            "Problems in the health verdict (/healthz lists them).",
            len(problems),
        ),
        gauge(
            "taskfleet_workers_connected",
            "Workers heard from within the lease timeout.",
            len(workers),
        ),
        gauge(
            "taskfleet_workers_lost",
            "Workers recently silent for longer than the lease timeout.",
            len(status.get("lost_workers") or []),
        ),
    ]

    age = gauge("taskfleet_worker_heartbeat_age_seconds", "Seconds since a worker was last heard.")
    done = counter("taskfleet_worker_items_done_total", "Items whose results a worker delivered.")
    held = gauge("taskfleet_worker_chunks_leased", "Chunks a worker holds now.")
    for w in workers:
        labels = {"worker": str(w.get("name", "")), "host": str(w.get("host", ""))}
        age.add(float(w.get("last_heartbeat_age_s", 0.0)), **labels)
        done.add(int(w.get("items_done", 0)), **labels)
        held.add(int(w.get("leased", 0)), **labels)
    out += [age, done, held]

    by_state = {s.value: 0 for s in JobState}
    chunks = {"pending": 0, "leased": 0, "done": 0}
    for job in jobs:
        for key in chunks:
            chunks[key] += int((job.get("chunks") or {}).get(key, 0))
    counted = status.get("jobs_by_state")
    if isinstance(counted, Mapping):  # every job the master keeps, listed or not
        by_state.update({str(k): int(v) for k, v in counted.items()})
    else:  # a status without the counts: the listed jobs
        for job in jobs:
            state = str(job.get("state", ""))
            by_state[state] = by_state.get(state, 0) + 1
    jobs_by_state = gauge("taskfleet_jobs", "Jobs the master keeps, by state.")
    for state, n in by_state.items():
        jobs_by_state.add(n, state=state)
    chunks_by_state = gauge("taskfleet_chunks", "Chunks of the listed jobs, by state.")
    for state, n in chunks.items():
        chunks_by_state.add(n, state=state)
    out += [jobs_by_state, chunks_by_state]

    out += [
        counter(
            "taskfleet_items_done_total",
            "Items whose results the master accepted.",
            int(totals.get("items_done", 0)),
        ),
        counter(
            "taskfleet_items_failed_total",
            "Items that failed for good (after retries).",
            int(totals.get("items_failed", 0)),
        ),
        counter(
            "taskfleet_duplicates_dropped_total",
            "Results dropped: their chunk was done.",
            int(totals.get("duplicates", 0)),
        ),
        counter(
            "taskfleet_chunk_attempts_failed_total",
            "Chunk runs that reported failed items (each attempt, retried or not).",
            live.failed_attempts,
        ),
        counter(
            "taskfleet_chunk_retries_total",
            "Failed chunks sent back to pending for another attempt.",
            live.retries,
        ),
        counter(
            "taskfleet_lease_expiries_total",
            "Chunk leases that expired (silent worker).",
            live.lease_expiries,
        ),
        counter(
            "taskfleet_handshakes_refused_total",
            "Manager connections refused at handshake.",
            live.handshakes_refused,
        ),
        gauge(
            "taskfleet_journal_bytes",
            "Size of the journal (database, WAL, shared memory).",
            int(journal.get("bytes", 0)),
        ),
        gauge(
            "taskfleet_journal_disk_free_bytes",
            "Free bytes on the journal's file system.",
            int(journal.get("disk_free_bytes", 0)),
        ),
        gauge(
            "taskfleet_journal_disk_size_bytes",
            "Size of the journal's file system.",
            int(journal.get("disk_size_bytes", 0)),
        ),
        counter(
            "taskfleet_process_cpu_seconds_total",
            "CPU time the master process used.",
            live.cpu_seconds,
        ),
        gauge(
            "taskfleet_process_resident_memory_bytes",
            "Resident memory of the master.",
            live.rss_bytes,
        ),
        gauge(
            "taskfleet_process_start_time_seconds",
            "Start of the master, Unix time.",
            live.start_time,
        ),
        gauge("taskfleet_process_threads", "Threads of the master process.", live.threads),
    ]
    if live.open_fds is not None:
        out.append(
            gauge(
                "taskfleet_process_open_fds", "Open file descriptors of the master.", live.open_fds
            )
        )

    tls = master.get("tls") or {}
    expiry = gauge("taskfleet_tls_cert_expiry_timestamp_seconds", "When a certificate expires.")
    for key, cert in (("cert", "master"), ("ca", "ca")):
        when = _timestamp(str(tls.get(f"{key}_not_after", "")))
        if when is not None:
            expiry.add(when, cert=cert)
    requests = counter("taskfleet_http_requests_total", "HTTP requests answered, by status code.")
    for code, n in sorted(live.http_requests.items()):
        requests.add(n, code=code)
    dropped = counter(
        "taskfleet_http_connections_dropped_total", "HTTP connections closed unanswered."
    )
    for reason, n in sorted(live.http_dropped.items()):
        dropped.add(n, reason=reason)
    out += [expiry, requests, dropped]
    return out


def render(
    status: Mapping[str, Any], totals: Mapping[str, int], problems: Sequence[str], live: Live
) -> str:
    """The whole ``/metrics`` page."""
    return format_families(families(status, totals, problems, live))

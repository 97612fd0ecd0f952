"""The metrics page: Prometheus' conventions, exact lines, and values read from the status."""

from __future__ import annotations

import re

from taskfleet import metrics
from taskfleet.protocol import JobState

LIVE = metrics.Live(
    lease_expiries=3,
    failed_attempts=6,
    retries=4,
    handshakes_refused=2,
    cpu_seconds=1.25,
    rss_bytes=30_000_000,
    start_time=1_790_000_000.5,
    threads=12,
    open_fds=20,
    http_requests={"200": 5, "404": 1},
    http_dropped={"timeout": 4},
)

STATUS = {
    "master": {
        "address": "10.0.0.1:7451",
        "version": "0.2.0",
        "journal": {"bytes": 8192, "disk_free_bytes": 10, "disk_size_bytes": 100},
    },
    "workers": [
        {"name": "w1-1", "host": "w1", "last_heartbeat_age_s": 0.5, "items_done": 700, "leased": 2},
        {"name": 'odd"name\\', "host": "w2", "last_heartbeat_age_s": 1, "items_done": 5},
    ],
    "lost_workers": [{"name": "w3-1", "host": "w3", "last_heartbeat_age_s": 40}],
    "jobs": [
        {"id": "a", "state": "running", "chunks": {"pending": 3, "leased": 2, "done": 5}},
        {"id": "b", "state": "done", "chunks": {"pending": 0, "leased": 0, "done": 7}},
    ],
}
TOTALS = {"items_done": 12000, "duplicates": 1, "items_failed": 0}


def page(problems: list[str] | None = None) -> str:
    return metrics.render(STATUS, TOTALS, problems or [], LIVE)


def test_every_family_has_help_and_type_and_follows_the_naming_rules() -> None:
    text = page()
    families = re.findall(r"^# TYPE (\S+) (\S+)$", text, re.M)
    assert len(families) == len({name for name, _ in families}) >= 25
    for name, kind in families:
        assert name.startswith("taskfleet_"), name
        assert f"# HELP {name} " in text
        assert kind in ("gauge", "counter")
        assert name.endswith("_total") == (kind == "counter"), name
        assert not re.search(r"_(ms|milliseconds|kb|mb|percent)\b", name), name


def test_samples_carry_the_values_of_the_status() -> None:
    lines = set(page(["a problem"]).splitlines())
    for line in (
        'taskfleet_info{version="0.2.0",address="10.0.0.1:7451"} 1',
        "taskfleet_healthy 0",
        "taskfleet_problems 1",
        "taskfleet_workers_connected 2",
        "taskfleet_workers_lost 1",
        'taskfleet_worker_heartbeat_age_seconds{worker="w1-1",host="w1"} 0.5',
        'taskfleet_worker_items_done_total{worker="w1-1",host="w1"} 700',
        'taskfleet_worker_chunks_leased{worker="w1-1",host="w1"} 2',
        'taskfleet_chunks{state="pending"} 3',
        'taskfleet_chunks{state="leased"} 2',
        'taskfleet_chunks{state="done"} 12',
        "taskfleet_items_done_total 12000",
        "taskfleet_items_failed_total 0",
        "taskfleet_duplicates_dropped_total 1",
        "taskfleet_lease_expiries_total 3",
        "taskfleet_chunk_attempts_failed_total 6",
        "taskfleet_chunk_retries_total 4",
        "taskfleet_handshakes_refused_total 2",
        "taskfleet_journal_bytes 8192",
        "taskfleet_journal_disk_free_bytes 10",
        "taskfleet_process_cpu_seconds_total 1.25",
        "taskfleet_process_resident_memory_bytes 30000000",
        "taskfleet_process_start_time_seconds 1790000000.5",
        "taskfleet_process_open_fds 20",
        'taskfleet_http_requests_total{code="200"} 5',
        'taskfleet_http_connections_dropped_total{reason="timeout"} 4',
    ):
        assert line in lines, line


def test_every_job_state_is_a_series_even_at_zero() -> None:
    lines = page().splitlines()
    for state in JobState:
        expected = 1 if state.value in ("running", "done") else 0
        assert f'taskfleet_jobs{{state="{state.value}"}} {expected}' in lines


def test_jobs_by_state_count_every_job_the_master_keeps_not_only_the_listed_ones() -> None:
    by_state = {"pending": 0, "running": 1, "done": 40, "failed": 2, "cancelled": 3}
    status = {**STATUS, "jobs_by_state": by_state, "jobs_not_listed": 43}
    lines = metrics.render(status, TOTALS, [], LIVE).splitlines()
    for state, n in by_state.items():
        assert f'taskfleet_jobs{{state="{state}"}} {n}' in lines


def test_label_values_are_escaped() -> None:
    assert 'taskfleet_worker_items_done_total{worker="odd\\"name\\\\",host="w2"} 5' in page()


def test_tls_expiry_appears_when_the_master_reports_it() -> None:
    status = {
        **STATUS,
        "master": {**STATUS["master"], "tls": {"cert_not_after": "2027-01-01T00:00:00Z"}},
    }  # type: ignore[dict-item]
    text = metrics.render(status, TOTALS, [], LIVE)
    assert 'taskfleet_tls_cert_expiry_timestamp_seconds{cert="master"} 1798761600.0' in text
    assert 'cert="ca"' not in text


def test_the_page_ends_with_a_newline_and_has_no_blank_lines() -> None:
    text = page()
    assert text.endswith("\n") and "\n\n" not in text

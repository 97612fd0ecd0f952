"""The health verdict: every problem, one exact line each, from status documents made here."""

from __future__ import annotations

from typing import Any

from taskfleet import health

GIB = 2**30


def status(**over: Any) -> dict[str, Any]:
    doc: dict[str, Any] = {
        "master": {
            "address": "10.0.0.1:7451",
            "lease_timeout_s": 30.0,
            "journal": {
                "path": "/var/lib/taskfleet/journal.db",
                "bytes": 4096,
                "disk_free_bytes": 50 * GIB,
                "disk_size_bytes": 100 * GIB,
            },
        },
        "workers": [
            {"name": "w1-1", "host": "w1", "last_heartbeat_age_s": 0.4, "leased": 0},
            {"name": "w2-1", "host": "w2", "last_heartbeat_age_s": 1.2, "leased": 0},
        ],
        "lost_workers": [],
        "jobs": [
            {
                "id": "j1",
                "job": "squares",
                "state": "running",
                "chunks": {"pending": 3, "leased": 2, "done": 5},
            },
            {
                "id": "j0",
                "job": "squares",
                "state": "done",
                "chunks": {"pending": 0, "leased": 0, "done": 9},
            },
        ],
    }
    doc.update(over)
    return doc


def test_a_cluster_with_workers_and_a_moving_job_is_healthy() -> None:
    assert health.assess(status()) == []
    assert health.verdict(status())["healthy"] is True


def test_fewer_workers_than_expected_is_a_problem_only_when_expected() -> None:
    assert health.assess(status(), expect_workers=2) == []
    assert health.assess(status(), expect_workers=3) == [
        "fewer workers than expected: 2 connected, 3 expected"
    ]


def test_a_lost_worker_is_named_with_its_host_and_silence() -> None:
    lost = [{"name": "w3-2", "host": "w3", "last_heartbeat_age_s": 41.6}]
    assert health.assess(status(lost_workers=lost)) == [
        "worker w3-2 on w3 silent for 42s (lease timeout 30s): its chunks went back to pending"
    ]


def test_a_listed_worker_older_than_the_lease_timeout_is_a_problem_too() -> None:
    doc = status()
    doc["workers"][1]["last_heartbeat_age_s"] = 31.0
    assert health.assess(doc) == [
        "worker w2-1 on w2 silent for 31s (lease timeout 30s): its chunks went back to pending"
    ]


def test_a_job_with_work_left_and_no_worker_cannot_progress() -> None:
    assert health.assess(status(workers=[])) == [
        "job j1 (squares) cannot progress: no worker is connected"
    ]


def test_finished_jobs_and_jobs_without_chunks_left_need_no_worker() -> None:
    doc = status(workers=[])
    doc["jobs"] = [
        {"id": "a", "job": "x", "state": "done", "chunks": {"pending": 0, "leased": 0}},
        {"id": "b", "job": "x", "state": "failed", "chunks": {"pending": 4, "leased": 0}},
        {"id": "c", "job": "x", "state": "cancelled", "chunks": {"pending": 4, "leased": 0}},
    ]
    assert health.assess(doc) == []


def test_a_job_whose_package_no_worker_has_cannot_progress() -> None:
    doc = status()
    doc["jobs"][0].update(job="primes", code_version="taskfleet-primes 1.0.0")
    for w in doc["workers"]:
        w["job_packages"] = {}
    assert health.assess(doc) == [
        "job j1 (primes) cannot progress: no connected worker has its job package taskfleet-primes"
    ]
    doc["workers"][1]["job_packages"] = {"taskfleet-primes": "1.0.0"}
    assert health.assess(doc) == []


def test_a_job_whose_version_no_worker_has_runs_on_other_code() -> None:
    doc = status()
    doc["jobs"][0].update(job="primes", code_version="taskfleet-primes 1.0.0")
    doc["workers"][0]["job_packages"] = {"taskfleet-primes": "1.1.0"}
    doc["workers"][1]["job_packages"] = {"taskfleet-primes": "1.2.0"}
    assert health.assess(doc) == [
        "job j1 (primes) runs on other code: submitted with taskfleet-primes 1.0.0,"
        " the connected workers have 1.1.0, 1.2.0"
    ]


def test_built_in_jobs_and_functions_of_other_distributions_are_not_judged() -> None:
    doc = status()
    doc["jobs"][0]["code_version"] = "taskfleet 0.2.0"  # squares: the hello checks taskfleet
    for w in doc["workers"]:
        w["job_packages"] = {"taskfleet-primes": "1.0.0"}
    assert health.assess(doc) == []
    # A module:function of a distribution that is no job package (workers list only those).
    doc["jobs"][0].update(job="numpy.linalg:norm", code_version="numpy 1.26.4")
    assert health.assess(doc) == []
    doc["jobs"][0]["code_version"] = ""  # no distribution owns it
    assert health.assess(doc) == []


def test_a_nearly_full_journal_disk_is_a_problem() -> None:
    doc = status()
    doc["master"]["journal"].update(disk_free_bytes=3 * GIB, disk_size_bytes=100 * GIB)
    assert health.assess(doc) == [
        "the journal's disk is nearly full: 3.0 GiB of 100.0 GiB free (3.0%)"
        " at /var/lib/taskfleet/journal.db"
    ]


def test_certificates_close_to_expiry_or_expired_are_problems() -> None:
    doc = status()
    doc["master"]["tls"] = {
        "enabled": True,
        "cert_days_left": 6.5,
        "cert_not_after": "2026-12-10T00:00:00Z",
        "ca_days_left": -1,
        "ca_not_after": "2026-12-02T00:00:00Z",
    }
    assert health.assess(doc) == [
        "the master's TLS certificate expires in 6.5 days (2026-12-10T00:00:00Z)",
        "the cluster's TLS CA expired on 2026-12-02T00:00:00Z",
    ]
    doc["master"]["tls"] = {"enabled": True, "cert_days_left": 200, "ca_days_left": 3000}
    assert health.assess(doc) == []


def test_fields_an_older_master_lacks_are_skipped() -> None:
    doc = {"master": {"address": "a:1"}, "workers": [], "jobs": []}
    assert health.assess(doc) == []


def test_the_verdict_keeps_the_document_and_lists_every_problem_in_order() -> None:
    doc = status(workers=[])
    doc["master"]["journal"]["disk_free_bytes"] = 0
    verdict = health.verdict(doc, expect_workers=1)
    assert verdict["healthy"] is False
    assert [p.split(":")[0] for p in verdict["problems"]] == [
        "fewer workers than expected",
        "job j1 (squares) cannot progress",
        "the journal's disk is nearly full",
    ]
    assert verdict["jobs"] == doc["jobs"]

"""make status's verdict: one line per problem from a status document, and its exit code."""

from __future__ import annotations

from typing import Any

from taskfleet.ops import verdict


def container(name: str, role: str, **over: Any) -> dict[str, Any]:
    c = {
        "name": name,
        "role": role,
        "state": "running",
        "health": "healthy",
        "uptime_s": 3600.0,
        "restart_count": 0,
        "exit_code": None,
    }
    c.update(over)
    return c


def doc(**over: Any) -> dict[str, Any]:
    d: dict[str, Any] = {
        "hosts": [
            {
                "host": "master",
                "roles": ["master"],
                "ok": True,
                "containers": [container("taskfleet-master", "master")],
            },
            {
                "host": "worker1",
                "roles": ["workers"],
                "ok": True,
                "containers": [
                    container("taskfleet-worker-1", "worker"),
                    container("taskfleet-worker-2", "worker"),
                ],
            },
        ],
        "master": {
            "healthy": True,
            "problems": [],
            "workers": [{"name": "worker1-worker-1", "host": "worker1"}] * 2,
        },
        "master_error": None,
    }
    d.update(over)
    return d


def test_a_deployed_cluster_with_every_worker_seen_is_healthy() -> None:
    assert verdict.problems(doc()) == []
    assert verdict.exit_code({**doc(), "problems": []}) == 0


def test_a_stopped_worker_is_named_with_its_exit_code_and_the_master_misses_it() -> None:
    d = doc()
    d["hosts"][1]["containers"][1].update(state="exited", exit_code=137, uptime_s=None)
    d["master"]["workers"] = d["master"]["workers"][:1]
    assert verdict.problems(d) == [
        "worker1/taskfleet-worker-2 is exited (exit code 137)",
        "fewer workers than expected on worker1: the master sees 1 of its 2 worker container(s)",
    ]
    assert verdict.exit_code({**d, "problems": verdict.problems(d)}) == 1


def test_unhealthy_restarting_and_recently_restarted_containers_are_problems() -> None:
    d = doc()
    d["hosts"][0]["containers"][0].update(health="unhealthy")
    d["hosts"][1]["containers"][0].update(state="restarting", restart_count=7)
    d["hosts"][1]["containers"][1].update(restart_count=2, uptime_s=42.4)
    assert verdict.problems(d) == [
        "master/taskfleet-master is unhealthy (its healthcheck fails)",
        "worker1/taskfleet-worker-1 is restarting, 7 restart(s)",
        "worker1/taskfleet-worker-2 was restarted by Docker 2 time(s), the last 42s ago",
    ]


def test_an_old_restart_and_a_starting_healthcheck_are_not_problems() -> None:
    d = doc()
    d["hosts"][1]["containers"][0].update(restart_count=1, uptime_s=verdict.RECENT_RESTART_S + 1)
    d["hosts"][1]["containers"][1].update(health="starting")
    assert verdict.problems(d) == []


def test_missing_containers_and_unreachable_hosts_are_problems() -> None:
    d = doc()
    d["hosts"][0]["containers"] = []
    d["hosts"][1] = {"host": "worker1", "roles": ["workers"], "ok": True, "containers": []}
    d["hosts"].append(
        {"host": "worker2", "roles": ["workers"], "ok": False, "error": "cannot reach it"}
    )
    assert verdict.problems(d) == [
        "master: no taskfleet-master container",
        "worker1: no worker containers",
        "worker2: cannot reach it",
    ]


def test_the_masters_own_problems_come_last_and_no_view_is_exit_2() -> None:
    d = doc()
    d["master"]["jobs"] = [
        {"id": "j", "job": "squares", "state": "running", "chunks": {"pending": 1}}
    ]
    d["master"]["workers"] = []
    assert verdict.problems(d)[-1] == "job j (squares) cannot progress: no worker is connected"
    gone = doc(master=None, master_error="cannot reach the master at 10.0.0.1:7451")
    assert verdict.problems(gone) == [
        "no view from the master: cannot reach the master at 10.0.0.1:7451"
    ]
    assert verdict.exit_code({**gone, "problems": verdict.problems(gone)}) == 2


def test_a_silent_worker_counts_only_while_its_host_is_in_the_inventory() -> None:
    d = doc()
    d["master"]["lost_workers"] = [
        {"name": "worker1-worker-3", "host": "worker1", "last_heartbeat_age_s": 35},
        {"name": "worker4-worker-1", "host": "worker4", "last_heartbeat_age_s": 35},
    ]
    assert verdict.problems(d) == [
        "worker worker1-worker-3 on worker1 silent for 35s (lease timeout 30s):"
        " its chunks went back to pending"
    ]

"""The container model: docker inspect JSON in, master first and workers by index out."""

from __future__ import annotations

import json
from datetime import UTC, datetime

from taskfleet.ops.containers import master_address, master_tls, parse_containers, workers_of
from taskfleet.ops.inventory import Host, Inventory

NOW = datetime(2025, 1, 1, 12, 0, 0, tzinfo=UTC)


def inspect_item(
    name: str,
    role: str,
    status: str = "running",
    health: str | None = "healthy",
    started: str = "2025-01-01T11:58:30.250000000Z",
    cmd: list[str] | None = None,
    restarts: int = 0,
    exit_code: int = 0,
) -> dict[str, object]:
    state: dict[str, object] = {"Status": status, "StartedAt": started, "ExitCode": exit_code}
    if health:
        state["Health"] = {"Status": health}
    return {
        "Name": f"/{name}",
        "RestartCount": restarts,
        "State": state,
        "Config": {
            "Image": f"registry.local:5000/taskfleet-{role}:abc123",
            "Labels": {
                "io.taskfleet.managed": "true",
                "io.taskfleet.role": role,
                "io.taskfleet.inventory_host": "h",
            },
            "Cmd": cmd or [],
        },
    }


def test_containers_are_read_from_docker_inspect_master_first_workers_by_index() -> None:
    text = json.dumps(
        [
            inspect_item("taskfleet-worker-10", "worker"),
            inspect_item("taskfleet-worker-2", "worker", status="exited", health="unhealthy"),
            inspect_item("taskfleet-master", "master", health=None),
        ]
    )
    found = parse_containers(text, NOW)
    assert [c.name for c in found] == [
        "taskfleet-master",
        "taskfleet-worker-2",
        "taskfleet-worker-10",
    ]
    master, w2, _ = found
    assert (master.role, master.health, master.tag, master.uptime_s) == (
        "master",
        "-",
        "abc123",
        89.75,
    )
    assert master.ready
    assert (w2.state, w2.health, w2.uptime_s, w2.ready) == ("exited", "unhealthy", None, False)
    assert [c.name for c in workers_of(found)] == ["taskfleet-worker-2", "taskfleet-worker-10"]


def test_no_containers_is_empty_output() -> None:
    assert parse_containers("  \n") == []


def test_a_starting_worker_is_not_ready_yet() -> None:
    (c,) = parse_containers(
        json.dumps([inspect_item("taskfleet-worker-1", "worker", health="starting")]), NOW
    )
    assert c.running and not c.ready


def inventory() -> Inventory:
    master = Host(
        "master",
        "172.28.40.10",
        "deploy",
        vars={"taskfleet_bind_ip": "172.28.40.10", "taskfleet_master_port": 7451},
    )
    return Inventory("inv", master, (Host("worker1", "172.28.40.11", "deploy"),))


def test_master_address_is_read_from_the_running_master_arguments() -> None:
    containers = parse_containers(
        json.dumps(
            [
                inspect_item(
                    "taskfleet-master",
                    "master",
                    cmd=["master", "--bind", "172.28.40.10", "--port=7999", "--authkey-file", "/x"],
                )
            ]
        ),
        NOW,
    )
    assert master_address(inventory(), containers) == "172.28.40.10:7999"


def test_master_address_falls_back_to_the_inventory() -> None:
    assert master_address(inventory(), []) == "172.28.40.10:7451"
    wildcard = parse_containers(
        json.dumps(
            [inspect_item("taskfleet-master", "master", cmd=["master", "--bind", "0.0.0.0"])]
        ),
        NOW,
    )
    assert master_address(inventory(), wildcard) == "172.28.40.10:7451"


def test_the_masters_tls_files_are_read_from_its_arguments() -> None:
    tls = ["--tls-ca", "/t/ca.crt", "--tls-cert", "/t/host.crt", "--tls-key", "/t/host.key"]
    for args, expected in [
        (["master", "--bind", "10.0.0.1", *tls], tls),
        (["master", "--bind", "10.0.0.1"], []),
        (["master", "--tls-ca", "/t/ca.crt"], []),  # not all three: none
    ]:
        containers = parse_containers(
            json.dumps([inspect_item("taskfleet-master", "master", cmd=args)]), NOW
        )
        assert master_tls(containers) == expected
    assert master_tls([]) == []


def test_restart_counts_and_the_exit_code_of_a_stopped_container_are_read() -> None:
    crashed, looping = parse_containers(
        json.dumps(
            [
                inspect_item("taskfleet-worker-1", "worker", "exited", None, exit_code=137),
                inspect_item("taskfleet-worker-2", "worker", restarts=4, exit_code=3),
            ]
        ),
        NOW,
    )
    assert (crashed.state, crashed.exit_code, crashed.restart_count) == ("exited", 137, 0)
    assert (looping.state, looping.exit_code, looping.restart_count) == ("running", None, 4)

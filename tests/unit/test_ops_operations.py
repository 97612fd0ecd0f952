"""Pure parts of the Fabric operations: reading docker inspect, the master's view, output."""

from __future__ import annotations

import io
import json
import subprocess
import sys
import threading
from datetime import UTC, datetime
from pathlib import Path

import pytest

from taskfleet.ops.fleet import PrefixWriter
from taskfleet.ops.inventory import Host, Inventory
from taskfleet.ops.operations import (
    fresh_workers,
    human_duration,
    master_address,
    master_tls,
    parse_containers,
    workers_of,
)

NOW = datetime(2025, 1, 1, 12, 0, 0, tzinfo=UTC)


def inspect_item(
    name: str,
    role: str,
    status: str = "running",
    health: str | None = "healthy",
    started: str = "2025-01-01T11:58:30.250000000Z",
    cmd: list[str] | None = None,
) -> dict[str, object]:
    state: dict[str, object] = {"Status": status, "StartedAt": started}
    if health:
        state["Health"] = {"Status": health}
    return {
        "Name": f"/{name}",
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


def test_master_address_falls_back_to_the_inventory() -> None:
    assert master_address(inventory(), []) == "172.28.40.10:7451"
    wildcard = parse_containers(
        json.dumps(
            [inspect_item("taskfleet-master", "master", cmd=["master", "--bind", "0.0.0.0"])]
        ),
        NOW,
    )
    assert master_address(inventory(), wildcard) == "172.28.40.10:7451"


def test_fresh_workers_counts_recent_heartbeats_per_host() -> None:
    view = {
        "workers": [
            {"name": "a", "host": "worker1", "last_heartbeat_age_s": 0.5},
            {"name": "b", "host": "worker1", "last_heartbeat_age_s": 9.0},
            {"name": "c", "host": "worker2", "last_heartbeat_age_s": 1.0},
        ]
    }
    assert fresh_workers(view, 5.0) == 2
    assert fresh_workers(view, 5.0, "worker1") == 1
    assert fresh_workers(view, 10.0, "worker1") == 2
    assert fresh_workers({}, 10.0) == 0


def test_durations_read_like_uptime() -> None:
    assert [human_duration(s) for s in (None, 5, 125, 7320, 190000)] == [
        "-",
        "5s",
        "2m05s",
        "2h02m",
        "2d4h",
    ]


def test_prefix_writer_emits_whole_lines_only() -> None:
    sink = io.StringIO()
    writer = PrefixWriter("worker1/", sink, threading.Lock())
    writer.write("taskfleet-worker-1 | hel")
    assert sink.getvalue() == ""
    writer.write("lo\r\nsecond")
    writer.close()
    assert sink.getvalue() == "worker1/taskfleet-worker-1 | hello\nworker1/second\n"


def test_fabfile_tasks_all_have_help_for_every_option() -> None:
    import importlib.util

    path = Path(__file__).resolve().parents[2] / "deploy" / "fabfile.py"
    spec = importlib.util.spec_from_file_location("fabfile_under_test", path)
    assert spec and spec.loader
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    names = ["status", "logs", "scale", "restart", "smoke", "down"]
    for name in names:
        task = getattr(module, name)
        params = [p for p in task.body.__code__.co_varnames[1 : task.body.__code__.co_argcount]]
        assert task.__doc__, name
        assert sorted(task.help) == sorted(params), name


# --- the fab command line: bad input is one line and changes nothing ----------------------

REPO = Path(__file__).resolve().parents[2]
FAB = Path(sys.executable).parent / "fab"


@pytest.fixture
def tiny_inventory(tmp_path: Path) -> Path:
    """An inventory whose hosts do not exist: only input checked before any SSH is used."""
    key = tmp_path / "key"
    key.write_text("x\n")
    known = tmp_path / "known_hosts"
    known.write_text("")
    inv = tmp_path / "inv"
    inv.mkdir()
    ssh = (
        f"ansible_user: deploy\n          ansible_ssh_private_key_file: {key}\n"
        f"          ansible_ssh_common_args: -o UserKnownHostsFile={known}\n"
    )
    (inv / "hosts.yml").write_text(
        "all:\n  children:\n"
        "    taskfleet_master:\n      hosts:\n        master:\n"
        f"          ansible_host: 192.0.2.10\n          {ssh}"
        "    taskfleet_workers:\n      hosts:\n        worker1:\n"
        f"          ansible_host: 192.0.2.11\n          {ssh}"
    )
    return inv


def fab(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [str(FAB), "-r", str(REPO / "deploy"), *args],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )


needs_fab = pytest.mark.skipif(not FAB.exists(), reason="fab not installed in this venv")


@needs_fab
@pytest.mark.parametrize(
    ("args", "message"),
    [
        (
            ["scale", "0"],
            "taskfleet: error: scale: N must be at least 1, got 0 — use `down` to "
            "remove every container",
        ),
        (["scale", "two"], "taskfleet: error: N must be an integer, got 'two'"),
        (
            ["scale", "2", "--host", "master"],
            "taskfleet: error: 'master' is not a worker host — worker hosts: worker1",
        ),
        (
            ["logs", "--host", "nope"],
            "taskfleet: error: unknown host 'nope' — valid hosts: master, worker1",
        ),
        (["smoke", "--count", "0"], "taskfleet: error: smoke: --count must be at least 1, got 0"),
    ],
)
def test_bad_input_is_one_line_and_nothing_is_contacted(
    tiny_inventory: Path, args: list[str], message: str
) -> None:
    # 192.0.2.0/24 is TEST-NET-1: were SSH attempted, the run would fail differently.
    result = fab(*args, "--inventory", str(tiny_inventory))
    assert result.returncode == 2
    assert result.stderr.strip() == message
    assert result.stdout == ""


@needs_fab
def test_a_broken_inventory_is_reported_with_its_problems(tmp_path: Path) -> None:
    (tmp_path / "hosts.yml").write_text("all:\n  hosts:\n    lonely:\n")
    result = fab("status", "--inventory", str(tmp_path))
    assert result.returncode == 2
    assert result.stderr.strip().splitlines() == [
        f"taskfleet: error: inventory {tmp_path} is not usable — fix these:",
        "  taskfleet_master: needs exactly one host, found 0",
        "  taskfleet_workers: needs at least one host, found 0",
    ]

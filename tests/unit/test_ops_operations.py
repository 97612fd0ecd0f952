"""Pure parts of the Fabric operations (the master's view, output, hints) and the fab
command line's one-line errors."""

from __future__ import annotations

import io
import subprocess
import sys
import threading
from pathlib import Path

import pytest

from taskfleet.ops.operations import containers_table, fresh_workers, human_duration
from taskfleet.ops.ssh import PrefixWriter


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
    names = ["status", "dashboard", "logs", "scale", "restart", "smoke", "down"]
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


def test_status_tables_keep_container_names_whole_in_80_columns() -> None:
    """A pipe (or a narrow terminal) gets 80 columns: the other columns wrap, the
    container names stay whole (what an operator greps for)."""
    from rich.console import Console

    containers = [
        {
            "name": f"taskfleet-worker-{i}",
            "role": "worker",
            "state": "running",
            "health": "healthy",
            "restart_count": 0,
            "tag": "0123456789ab",
            "uptime_s": 3600.0,
        }
        for i in (1, 2, 10)
    ]
    console = Console(width=80, record=True, file=io.StringIO())
    console.print(containers_table("worker1 — 3 worker(s) running", containers))
    text = console.export_text()
    for i in (1, 2, 10):
        assert f"taskfleet-worker-{i} " in text
    assert max(len(line) for line in text.splitlines()) <= 80

"""One master and two workers from the images, on a Docker network of their own.

Tests run in file order and share the session cluster; the secrets test is last
so it sees every log the others produced.
"""

from __future__ import annotations

import base64
import json
import subprocess
import time
from pathlib import Path
from typing import Any

import pytest

from tests.containers.conftest import Cluster, logs, make_authkey
from tests.waiting import wait_for

# Keys of every container this module started (the wrong-key worker adds its own).
_KEYS: list[Path] = []


def _stdout_lines(container: Any) -> list[str]:
    return container.logs(stdout=True, stderr=False).decode().strip().splitlines()


def _health(container: Any) -> str:
    container.reload()
    return str(container.attrs["State"].get("Health", {}).get("Status", "none"))


def test_master_and_both_workers_become_healthy(cluster: Cluster) -> None:
    _KEYS.append(cluster.key)
    members = [cluster.master, *cluster.workers]
    wait_for(
        "master and workers healthy",
        lambda: all(_health(c) == "healthy" for c in members),
        timeout=60,
        detail=lambda: {c.name: _health(c) for c in members},
    )


def test_smoke_from_a_container_on_the_network_passes(cluster: Cluster) -> None:
    client = cluster.run_client(
        ["smoke", "--count", "20000", "--expect-workers", "2", "--json", "--timeout", "120"]
    )
    status = client.wait(timeout=180)
    assert status["StatusCode"] == 0, logs(client)
    report = json.loads(_stdout_lines(client)[-1])
    assert report["ok"] is True
    assert (report["count"], report["verified"], report["missing"], report["wrong"]) == (
        20000,
        20000,
        0,
        0,
    )
    assert len(report["workers"]) == 2
    assert set(report["hosts"]) == {"w1", "w2"}
    assert sum(report["hosts"].values()) == 20000


def test_every_process_runs_as_uid_10001_under_tini(cluster: Cluster) -> None:
    for container in (cluster.master, *cluster.workers):
        top = container.top(ps_args="-o pid,uid,gid,args")
        uid, gid = top["Titles"].index("UID"), top["Titles"].index("GID")
        assert top["Processes"], container.name
        assert {(p[uid], p[gid]) for p in top["Processes"]} == {("10001", "10001")}, top
        rc, out = container.exec_run(["cat", "/proc/1/status", "/proc/1/cmdline"])
        assert rc == 0
        text = out.decode(errors="replace")
        assert "Uid:\t10001\t10001\t10001\t10001" in text
        assert "/usr/bin/tini" in text  # PID 1 is the init, taskfleet its child


def test_docker_stop_of_a_worker_during_a_job_is_quick_and_nothing_is_lost(
    cluster: Cluster, tmp_path: Path
) -> None:
    # time:sleep makes every chunk take a known time: 800 items x 50 ms in chunks
    # of 10 keep 4 pool processes busy for ~10 s, so the stop lands mid-job.
    items = tmp_path / "sleeps.txt"
    items.write_text("0.05\n" * 800)
    items.chmod(0o644)
    client = cluster.run_client(
        [
            *("submit", "time:sleep", "--items-file", "/items/sleeps.txt"),
            *("--chunk-size", "10", "--json", "--timeout", "300"),
        ],
        extra_volumes={str(items): {"bind": "/items/sleeps.txt", "mode": "ro"}},
    )

    def w2_busy() -> dict[str, Any] | None:
        status = cluster.status()
        running = [j for j in status["jobs"] if j["job"] == "time:sleep" and j["state"] != "done"]
        held = [w for w in status["workers"] if w["host"] == "w2" and w["leased"] > 0]
        return status if running and held else None

    status = wait_for("worker w2 holding chunks of the job", w2_busy, timeout=60, interval=0.2)
    job = next(j for j in status["jobs"] if j["job"] == "time:sleep")
    assert job["items_done"] < job["items_total"]

    victim = cluster.workers[1]
    started = time.monotonic()
    victim.stop(timeout=10)  # SIGTERM, then SIGKILL after 10 s
    elapsed = time.monotonic() - started
    victim.reload()
    assert elapsed < 10, f"docker stop took {elapsed:.1f} s"
    # 0, not 137: tini passed SIGTERM on and the worker drained by itself.
    assert victim.attrs["State"]["ExitCode"] == 0, logs(victim)[-2000:]
    assert "drained" in logs(victim)

    assert client.wait(timeout=240)["StatusCode"] == 0, logs(client)[-2000:]
    lines = [json.loads(line) for line in _stdout_lines(client)]
    summary, chunks = lines[-1], lines[:-1]
    indexes = sorted(c["chunk"] for c in chunks)
    assert indexes == list(range(80)), "every chunk exactly once"
    assert sum(len(c["results"]) for c in chunks) == 800
    assert all(len(c["results"]) == len(c["items"]) == 10 for c in chunks)
    assert all(r is None for c in chunks for r in c["results"])  # time.sleep's result
    assert (summary["state"], summary["items"], summary["results"]) == ("done", 800, 800)

    victim.start()  # back to two workers for whatever runs next
    wait_for(
        "w2 back", lambda: _health(victim) == "healthy", timeout=60, detail=lambda: _health(victim)
    )


def test_worker_with_a_different_authkey_is_refused_and_says_so(
    cluster: Cluster, tmp_path_factory: pytest.TempPathFactory
) -> None:
    other = make_authkey(tmp_path_factory.mktemp("other-key"), "authkey")
    _KEYS.append(other)
    intruder = cluster.run_worker("intruder", key=other)
    wait_for(
        "the wrong-key worker to log its refusal",
        lambda: "refused our authkey" in logs(intruder),
        timeout=60,
        detail=lambda: logs(intruder)[-300:],
    )
    wait_for(
        "the master to log the refused peer",
        lambda: "wrong authkey" in logs(cluster.master),
        timeout=30,
    )

    # A wrong key is fatal for a worker (retrying cannot help): it exits non-zero.
    def exited() -> bool:
        intruder.reload()
        return bool(intruder.status == "exited")

    wait_for("the wrong-key worker to exit", exited, timeout=30, detail=lambda: intruder.status)
    assert intruder.attrs["State"]["ExitCode"] != 0
    assert "taskfleet: error: the master at" in logs(intruder)
    status = cluster.status()
    assert "intruder" not in {w["host"] for w in status["workers"]}
    # Left running (or exited) on purpose: the next test reads its log; teardown removes it.


def _forms(key_file: Path) -> list[bytes]:
    """Every spelling of the key a leak could take: as stored, raw, hex, base64."""
    text = key_file.read_bytes().strip()
    raw = bytes.fromhex(text.decode())
    forms = [text, text.upper(), raw, raw.hex().encode()]
    for blob in (raw, text):
        forms += [base64.b64encode(blob), base64.urlsafe_b64encode(blob)]
        forms += [base64.b64encode(blob).rstrip(b"=")]
    return forms


def test_a_second_master_on_the_journal_volume_is_refused_and_journal_check_reads_it(
    cluster: Cluster,
) -> None:
    """The lock works across containers (one kernel, one file), and the documented
    recovery command runs from the image against the volume."""
    journal = {f"{cluster.run_id}-journal": {"bind": "/var/lib/taskfleet", "mode": "rw"}}
    second = cluster.client.containers.run(
        cluster.images.master,  # the image's default command, on the same journal volume
        name=f"{cluster.run_id}-second-master",
        detach=True,
        network=cluster.network,
        volumes={**cluster.secret_mount(), **journal},
        labels={**cluster.labels, "io.taskfleet.role": "master"},
    )
    assert second.wait(timeout=60)["StatusCode"] == 1
    line = logs(second).strip().splitlines()[-1]
    assert line.startswith(
        "taskfleet: error: journal /var/lib/taskfleet/journal.db is in use by another master (pid "
    ), line
    assert " on host master, since " in line
    assert _health(cluster.master) == "healthy", "the first master serves on"

    check = cluster.client.containers.run(
        cluster.images.master,
        command=["journal", "check", "/var/lib/taskfleet/journal.db"],
        name=f"{cluster.run_id}-journal-check",
        detach=True,
        volumes=journal,
        labels={**cluster.labels, "io.taskfleet.role": "client"},
    )
    assert check.wait(timeout=60)["StatusCode"] == 0, logs(check)
    out = _stdout_lines(check)
    assert out[0].startswith("/var/lib/taskfleet/journal.db: a taskfleet journal, ")
    assert out[0].endswith("— intact") and out[1].startswith("  in use by a master (pid ")


def test_no_authkey_bytes_in_inspect_history_or_logs(cluster: Cluster) -> None:
    assert _KEYS, "runs after the tests that used the keys"
    label = f"label=io.taskfleet.test={cluster.run_id}"
    containers = subprocess.run(
        ["docker", "ps", "-aq", "--filter", label], capture_output=True, check=True, text=True
    ).stdout.split()
    assert len(containers) >= 3
    images = [cluster.images.master, cluster.images.worker, cluster.images.base]
    haystacks: dict[str, bytes] = {}
    haystacks["inspect"] = subprocess.run(
        ["docker", "inspect", *containers, *images], capture_output=True, check=True
    ).stdout
    for image in images:
        haystacks[f"history {image}"] = subprocess.run(
            ["docker", "history", "--no-trunc", image], capture_output=True, check=True
        ).stdout
    for cid in containers:
        haystacks[f"logs {cid}"] = (
            subprocess.run(["docker", "logs", cid], capture_output=True, check=True).stdout
            + subprocess.run(["docker", "logs", cid], capture_output=True, check=True).stderr
        )
    assert b"refused our authkey" in b"".join(haystacks.values())  # the logs are really here
    for key in _KEYS:
        for form in _forms(key):
            for where, blob in haystacks.items():
                assert form not in blob, f"authkey ({form[:6]!r}…) found in {where}"

"""Fabric day-two operations on the deployed lab.

Runs the real ``fab`` command over real SSH against the lab that the Ansible
deploy converged, and checks every claim through another path: the engines
inside the lab hosts (``docker exec <labhost> docker …``) and the master's
own ``taskfleet status``. Long jobs are run by a one-off client container on
a worker host (not in the master container, which `restart` restarts), using
``taskfleet smoke``, which checks every result is right and arrived once.

Order matters: ``down`` is the last test of this file.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import yaml

from tests.e2e.conftest import Lab
from tests.e2e.test_20_deploy import TLS_ARGS
from tests.waiting import wait_for

REPO = Path(__file__).resolve().parents[2]
FAB = Path(sys.executable).parent / "fab"
CLIENT = "taskfleet-e2e-fabric-client"
AUTHKEY_MOUNT = (
    "type=bind,source=/etc/taskfleet/authkey,target=/run/secrets/taskfleet_authkey,readonly"
)
TLS_MOUNT = "type=bind,source=/etc/taskfleet/tls,target=/run/secrets/taskfleet_tls,readonly"
#: One-item chunks: a job's length is set by its chunk count (leases, heartbeats, journal
#: writes), so a long job stays small in items and in journal size.
CHUNK = 1


def fab(lab: Lab, *args: str, timeout: float = 600) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [str(FAB), "-r", str(REPO / "deploy"), *args, "--inventory", str(lab.inventory_dir)],
        capture_output=True,
        text=True,
        timeout=timeout,
        check=False,
    )


def inner(lab: Lab, host: str, *argv: str, timeout: float = 120, ok: tuple[int, ...] = (0,)) -> str:
    """Run a command in a lab host's own engine namespace (not through Fabric); its exit
    status must be one of ``ok``."""
    result = subprocess.run(
        ["docker", "exec", lab.container(host), *argv],
        capture_output=True,
        text=True,
        timeout=timeout,
        check=False,
    )
    assert result.returncode in ok, f"{host}: {argv}: {result.stderr}"
    return result.stdout


def running_workers(lab: Lab, host: str) -> list[str]:
    out = inner(
        lab,
        host,
        "docker",
        "ps",
        "--filter",
        "label=io.taskfleet.role=worker",
        "--format",
        "{{.Names}}",
    )
    return sorted(
        (n for n in out.split() if n.startswith("taskfleet-worker-")),
        key=lambda n: int(n.rsplit("-", 1)[1]),
    )


def taskfleet_containers(lab: Lab, host: str) -> list[str]:
    out = inner(
        lab,
        host,
        "docker",
        "ps",
        "-a",
        "--filter",
        "label=io.taskfleet.managed=true",
        "--format",
        "{{.Names}}",
    )
    return sorted(out.split())


def master_address(lab: Lab) -> str:
    args = json.loads(
        inner(lab, "master", "docker", "inspect", "-f", "{{json .Args}}", "taskfleet-master")
    )
    return f"{args[args.index('--bind') + 1]}:{args[args.index('--port') + 1]}"


def master_view(lab: Lab) -> dict[str, Any]:
    out = inner(
        lab,
        "master",
        "docker",
        "exec",
        "taskfleet-master",
        "taskfleet",
        "status",
        "--master",
        master_address(lab),
        "--authkey-file",
        "/run/secrets/taskfleet_authkey",
        *TLS_ARGS,
        "--json",
        ok=(0, 1),  # healthy or degraded: the view either way
    )
    return json.loads(out.strip().splitlines()[-1])


def fresh_per_host(view: dict[str, Any], max_age: float = 10) -> dict[str, int]:
    counts: dict[str, int] = {}
    for w in view.get("workers", []):
        if w.get("last_heartbeat_age_s", 1e9) <= max_age:
            counts[w["host"]] = counts.get(w["host"], 0) + 1
    return counts


def deployed_per_host(lab: Lab) -> int:
    """taskfleet_workers_per_host as Ansible sees it (inventory, else the role default)."""
    out = subprocess.run(
        [
            str(Path(sys.executable).parent / "ansible-inventory"),
            "-i",
            str(lab.inventory_dir),
            "--host",
            lab.workers[0],
        ],
        capture_output=True,
        text=True,
        timeout=60,
        check=True,
    ).stdout
    value = json.loads(out).get("taskfleet_workers_per_host")
    if value is None:
        defaults = yaml.safe_load((REPO / "deploy/roles/workers/defaults/main.yml").read_text())
        value = defaults["taskfleet_workers_per_host"]
    return int(value)


class LongJob:
    """A squares smoke run by a one-off client container on ``host`` (outside the master
    container, so it survives the master's restart and reconnects by itself)."""

    def __init__(self, lab: Lab, host: str, count: int, chunk_size: int = CHUNK) -> None:
        self.lab, self.host, self.count = lab, host, count
        image = inner(
            lab, host, "docker", "inspect", "-f", "{{.Config.Image}}", "taskfleet-worker-1"
        ).strip()
        self.before = {j["id"] for j in master_view(lab).get("jobs", [])}
        self.proc = subprocess.Popen(
            [
                "docker",
                "exec",
                lab.container(host),
                "docker",
                "run",
                "--rm",
                "--name",
                CLIENT,
                # not a worker, whatever the image's labels say
                "--label",
                "io.taskfleet.role=e2e-client",
                "--label",
                "io.taskfleet.e2e=fabric",
                "--network",
                "host",
                "--mount",
                AUTHKEY_MOUNT,
                "--mount",
                TLS_MOUNT,
                image,
                "smoke",
                "--master",
                master_address(lab),
                "--authkey-file",
                "/run/secrets/taskfleet_authkey",
                *TLS_ARGS,
                "--count",
                str(count),
                "--chunk-size",
                str(chunk_size),
                "--timeout",
                "900",
                "--json",
            ],
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
        self.started = time.monotonic()

    def wait_running(self) -> None:
        """Until the master lists the new job with some (but not all) items done."""

        def running() -> bool:
            assert self.proc.poll() is None, f"client ended early: {self.proc.communicate()}"
            jobs = [j for j in master_view(self.lab).get("jobs", []) if j["id"] not in self.before]
            return any(j["state"] == "running" and j.get("items_done", 0) > 0 for j in jobs)

        wait_for("the long job to run", running, timeout=120)

    def master_job(self) -> dict[str, Any]:
        """This job as the master sees it (the only job submitted since we started)."""
        jobs = [j for j in master_view(self.lab).get("jobs", []) if j["id"] not in self.before]
        assert len(jobs) == 1, jobs
        return jobs[0]

    def wait_done_on_master(self, timeout: float = 600) -> dict[str, Any]:
        """The master's own account: the job finished with every chunk done once."""
        job = wait_for(
            "the job to finish on the master",
            lambda: (j := self.master_job())["state"] == "done" and j,
            timeout=timeout,
        )
        assert (job["items_done"], job["items_total"]) == (self.count, self.count), job
        assert job["chunks"]["pending"] == job["chunks"]["leased"] == 0, job
        return dict(job)

    def still_running(self) -> bool:
        return self.proc.poll() is None

    def report(self, timeout: float = 900) -> dict[str, Any]:
        out, err = self.proc.communicate(timeout=timeout)
        lines = [ln for ln in out.strip().splitlines() if ln.startswith("{")]
        assert lines, f"no JSON from smoke (exit {self.proc.returncode}): {err[-2000:]}"
        report: dict[str, Any] = json.loads(lines[-1])
        report["_exit"] = self.proc.returncode
        report["_seconds"] = time.monotonic() - self.started
        return report

    def kill(self) -> None:
        if self.proc.poll() is None:
            self.proc.kill()
            self.proc.communicate()
        subprocess.run(
            ["docker", "exec", self.lab.container(self.host), "docker", "rm", "-f", CLIENT],
            capture_output=True,
            timeout=60,
            check=False,
        )


def assert_exactly_once(report: dict[str, Any], count: int) -> None:
    summary = {
        k: report.get(k)
        for k in ("ok", "count", "verified", "missing", "wrong", "duplicates", "_exit", "_seconds")
    }
    assert report["ok"] is True, summary
    assert (report["count"], report["verified"]) == (count, count), summary
    assert (report["missing"], report["wrong"], report["duplicates"]) == (0, 0, 0), summary
    assert report["_exit"] == 0, summary


def is_deployed(lab: Lab) -> bool:
    """The master and at least one worker per worker host run (seen by the engines)."""
    master = inner(
        lab,
        "master",
        "docker",
        "ps",
        "--filter",
        "name=^taskfleet-master$",
        "--format",
        "{{.Names}}",
    ).split()
    return master == ["taskfleet-master"] and all(running_workers(lab, h) for h in lab.workers)


@pytest.fixture(scope="module")
def cluster(lab: Lab) -> Lab:
    """The deployed lab. test_20_deploy leaves it deployed; run alone, this file deploys
    it (images built first, as test_20 does; TASKFLEET_E2E_IMAGES_MANIFEST overrides)."""
    if is_deployed(lab):
        return lab
    env = {**os.environ, "ANSIBLE_CONFIG": str(REPO / "deploy/ansible.cfg")}
    extra: list[str] = []
    manifest = os.environ.get("TASKFLEET_E2E_IMAGES_MANIFEST")
    if manifest:
        extra = ["-e", f"taskfleet_images_manifest={manifest}"]
    else:
        build = subprocess.run(
            [sys.executable, "-m", "taskfleet.ops.images", "build"],
            capture_output=True,
            text=True,
            timeout=1800,
            cwd=REPO,
            check=False,
        )
        assert build.returncode == 0, build.stdout[-2000:] + build.stderr[-2000:]
    result = subprocess.run(
        [
            str(Path(sys.executable).parent / "ansible-playbook"),
            "-i",
            str(lab.inventory_dir),
            str(REPO / "deploy/site.yml"),
            *extra,
        ],
        capture_output=True,
        text=True,
        timeout=1800,
        check=False,
        cwd=REPO,
        env=env,
    )
    assert result.returncode == 0, result.stdout[-4000:] + result.stderr[-2000:]
    return lab


@pytest.fixture
def long_job_host(cluster: Lab) -> Iterator[str]:
    host = cluster.workers[-1]
    yield host
    subprocess.run(
        ["docker", "exec", cluster.container(host), "docker", "rm", "-f", CLIENT],
        capture_output=True,
        timeout=60,
        check=False,
    )


@pytest.fixture(scope="module")
def items_per_s(cluster: Lab) -> float:
    """This lab's speed for CHUNK-sized chunks, so "long" jobs last long on any machine."""
    host = cluster.workers[-1]
    job = LongJob(cluster, host, 20_000)
    try:
        report = job.report(timeout=300)
    finally:
        job.kill()
    assert_exactly_once(report, 20_000)
    return float(report["items_per_s"])


def long_job_size(items_per_s: float, seconds: float) -> int:
    """Items that keep the full cluster busy for ``seconds`` (bounded both ways)."""
    return max(20_000, min(3_000_000, int(items_per_s * seconds)))


# --- status, logs, smoke ------------------------------------------------------------------


def test_status_json_reports_every_host_with_its_workers(cluster: Lab) -> None:
    per_host = deployed_per_host(cluster)
    result = fab(cluster, "status", "--json")
    assert result.returncode == 0, result.stderr
    doc = json.loads(result.stdout)
    assert [h["host"] for h in doc["hosts"]] == ["master", *cluster.workers]
    by_name = {h["host"]: h for h in doc["hosts"]}
    master = by_name["master"]
    assert [(c["name"], c["role"], c["state"]) for c in master["containers"]] == [
        ("taskfleet-master", "master", "running")
    ]
    for host in cluster.workers:
        entry = by_name[host]
        assert entry["ok"] and entry["workers_running"] == per_host, entry
        # the same answer as the host's own engine gives
        assert [c["name"] for c in entry["containers"]] == running_workers(cluster, host)
        assert all(c["tag"] and c["uptime_s"] is not None for c in entry["containers"])
    # the master's view: every worker container connected, grouped by inventory host (polled:
    # workers the previous tests removed stay listed until their lease timeout)
    expected = {h: per_host for h in cluster.workers}
    wait_for(
        "the master's view in status --json to list every worker",
        lambda: (
            fresh_per_host(json.loads(fab(cluster, "status", "--json").stdout)["master"], 15)
            == expected
        ),
        timeout=90,
    )


def test_status_tables_show_health_and_the_masters_view(cluster: Lab) -> None:
    result = fab(cluster, "status")
    assert result.returncode == 0, result.stderr
    assert "taskfleet-worker-1" in result.stdout and "healthy" in result.stdout
    assert "master's view" in result.stdout and "worker(s) connected" in result.stdout


def test_logs_are_prefixed_by_host_and_container(cluster: Lab) -> None:
    result = fab(cluster, "logs", "--tail", "3")
    assert result.returncode == 0, result.stderr
    prefixes = {line.split(" | ", 1)[0] for line in result.stdout.splitlines() if " | " in line}
    assert "master/taskfleet-master" in prefixes
    assert {f"{h}/taskfleet-worker-1" for h in cluster.workers} <= prefixes
    one = fab(cluster, "logs", "--host", cluster.workers[0], "--tail", "2")
    assert one.returncode == 0, one.stderr
    assert all(line.startswith(f"{cluster.workers[0]}/") for line in one.stdout.splitlines())


def test_followed_logs_stream_new_lines_and_leave_nothing_running(cluster: Lab) -> None:
    follow = subprocess.Popen(
        [
            str(FAB),
            "-r",
            str(REPO / "deploy"),
            "logs",
            "--follow",
            "--tail",
            "0",
            "--host",
            "master",
            "--inventory",
            str(cluster.inventory_dir),
        ],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        time.sleep(3)
        assert fab(cluster, "smoke", "--count", "1000").returncode == 0
        time.sleep(2)
        follow.send_signal(signal.SIGINT)
        out, err = follow.communicate(timeout=30)
    finally:
        if follow.poll() is None:
            follow.kill()
            follow.communicate()
    assert re.search(r"^master/taskfleet-master \| \S+ .*submitted", out, re.M), out + err

    # the remote `docker logs --follow` ended with the session
    def gone() -> bool:
        ps = inner(cluster, "master", "ps", "-eo", "args")
        return not any(
            line.startswith(("docker logs", "sudo -n sh -c docker logs"))
            for line in ps.splitlines()
        )

    wait_for("the remote docker logs to end", gone, timeout=20)


def test_fabric_smoke_uses_every_worker_host(cluster: Lab) -> None:
    result = fab(cluster, "smoke", "--count", "20000", "--json")
    assert result.returncode == 0, result.stdout + result.stderr
    report = json.loads(result.stdout.strip().splitlines()[-1])["report"]
    assert report["verified"] == 20000
    assert sorted(report["hosts"]) == sorted(cluster.workers)


# --- scale and restart under load -------------------------------------------------------


def test_scale_up_and_down_during_a_long_job_loses_nothing(
    cluster: Lab, long_job_host: str, items_per_s: float
) -> None:
    per_host = deployed_per_host(cluster)
    # Four workers per host will go through it about twice as fast as the deployed two.
    count = long_job_size(items_per_s, 60)
    job = LongJob(cluster, long_job_host, count)
    try:
        job.wait_running()

        up = fab(cluster, "scale", "4")
        assert up.returncode == 0, up.stdout + up.stderr
        expected = [f"taskfleet-worker-{i}" for i in range(1, 5)]
        for host in cluster.workers:
            assert running_workers(cluster, host) == expected
        # the clones really work: the master hears four workers from every host
        wait_for(
            "4 workers per host in the master's view",
            lambda: fresh_per_host(master_view(cluster)) == {h: 4 for h in cluster.workers},
            timeout=90,
        )
        assert job.still_running(), "the job ended before the scale-down: make it longer"

        down = fab(cluster, "scale", "1")
        assert down.returncode == 0, down.stdout + down.stderr
        for host in cluster.workers:
            assert running_workers(cluster, host) == ["taskfleet-worker-1"]

        assert_exactly_once(job.report(), count)
    finally:
        job.kill()

    doc = json.loads(fab(cluster, "status", "--json").stdout)
    assert {h["host"]: h["workers_running"] for h in doc["hosts"]} == {
        "master": 0,
        **{h: 1 for h in cluster.workers},
    }
    wait_for(
        "1 worker per host in the master's view",
        lambda: fresh_per_host(master_view(cluster)) == {h: 1 for h in cluster.workers},
        timeout=90,
    )

    # back to the deployed shape for the tests that follow
    back = fab(cluster, "scale", str(per_host))
    assert back.returncode == 0, back.stdout + back.stderr


def test_rolling_restart_during_a_job_loses_nothing(
    cluster: Lab, long_job_host: str, items_per_s: float
) -> None:
    per_host = deployed_per_host(cluster)
    before = {
        h: inner(
            cluster, h, "docker", "inspect", "-f", "{{.State.StartedAt}}", "taskfleet-worker-1"
        ).strip()
        for h in cluster.workers
    }
    before["master"] = inner(
        cluster, "master", "docker", "inspect", "-f", "{{.State.StartedAt}}", "taskfleet-master"
    ).strip()
    # The roll takes about 20 s per host (drain, start, healthcheck, master sees them).
    count = long_job_size(items_per_s, 30 * (len(cluster.workers) + 1))
    job = LongJob(cluster, long_job_host, count)
    try:
        job.wait_running()
        result = fab(cluster, "restart", timeout=900)
        assert result.returncode == 0, result.stdout + result.stderr
        # one host at a time, the master last
        order = [
            line.split(":")[0]
            for line in result.stdout.splitlines()
            if line.endswith(": restarted")
        ]
        assert order == cluster.workers
        # the master's journal kept the job through its restart: nothing lost there ...
        job.wait_done_on_master()
        # ... and the waiting client reconnected and got every result exactly once
        assert_exactly_once(job.report(), count)
    finally:
        job.kill()
    # every container really restarted, and all are back
    for host in cluster.workers:
        started = inner(
            cluster, host, "docker", "inspect", "-f", "{{.State.StartedAt}}", "taskfleet-worker-1"
        ).strip()
        assert started != before[host]
        assert len(running_workers(cluster, host)) == per_host
    assert (
        inner(
            cluster, "master", "docker", "inspect", "-f", "{{.State.StartedAt}}", "taskfleet-master"
        ).strip()
        != before["master"]
    )


# --- host keys ----------------------------------------------------------------------------


def test_unknown_and_changed_host_keys_are_refused_per_host(cluster: Lab, tmp_path: Path) -> None:
    """A copy of the inventory whose known_hosts lacks one worker and holds a wrong key
    for another: those two fail with one line each, the rest still answer."""
    if len(cluster.workers) < 2:
        pytest.skip("needs two worker hosts")
    unknown, changed = cluster.workers[0], cluster.workers[1]
    other_key = tmp_path / "other"
    subprocess.run(
        ["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-f", str(other_key)],
        check=True,
        timeout=30,
    )
    wrong = " ".join(other_key.with_suffix(".pub").read_text().split()[:2])
    lines = []
    for line in cluster.known_hosts.read_text().splitlines():
        names = line.split()[0].split(",")
        if unknown in names:
            continue
        if changed in names:
            line = f"{line.split()[0]} {wrong}"
        lines.append(line)
    known = tmp_path / "known_hosts"
    known.write_text("\n".join(lines) + "\n")

    inv = tmp_path / "inv"
    inv.mkdir()
    text = (cluster.inventory_dir / "hosts.yml").read_text()
    (inv / "hosts.yml").write_text(text.replace(str(cluster.known_hosts), str(known)))
    for sub in ("group_vars", "host_vars"):
        if (cluster.inventory_dir / sub).exists():
            shutil.copytree(cluster.inventory_dir / sub, inv / sub)

    result = subprocess.run(
        [str(FAB), "-r", str(REPO / "deploy"), "status", "--json", "--inventory", str(inv)],
        capture_output=True,
        text=True,
        timeout=300,
        check=False,
    )
    assert result.returncode == 1
    hosts = {h["host"]: h for h in json.loads(result.stdout)["hosts"]}
    assert not hosts[unknown]["ok"]
    assert hosts[unknown]["error"].startswith(
        f"host key of deploy@{cluster.hosts[unknown]}:22 is unknown (not in {known})"
    )
    assert not hosts[changed]["ok"]
    assert hosts[changed]["error"].startswith(
        f"host key of deploy@{cluster.hosts[changed]}:22 does not match {known}"
    )
    others = [h for h in hosts if h not in (unknown, changed)]
    assert others and all(hosts[h]["ok"] for h in others)
    # nothing was learnt: the file is exactly what we wrote
    assert known.read_text() == "\n".join(lines) + "\n"


# --- down (last: the lab is removed by test_99) ---------------------------------------------


def test_down_leaves_no_taskfleet_container(cluster: Lab) -> None:
    result = fab(cluster, "down")
    assert result.returncode == 0, result.stdout + result.stderr
    for host in ["master", *cluster.workers]:
        assert taskfleet_containers(cluster, host) == []
    # the journal and the authkey stay without --purge
    assert "taskfleet-journal" in inner(cluster, "master", "docker", "volume", "ls", "-q")
    inner(cluster, "master", "test", "-f", "/etc/taskfleet/authkey")


def test_down_purge_also_removes_the_journal_and_the_authkey(cluster: Lab) -> None:
    result = fab(cluster, "down", "--purge")
    assert result.returncode == 0, result.stdout + result.stderr
    for host in ["master", *cluster.workers]:
        assert taskfleet_containers(cluster, host) == []
        assert (
            inner(
                cluster,
                host,
                "docker",
                "volume",
                "ls",
                "-q",
                "--filter",
                "label=io.taskfleet.managed=true",
            )
            == ""
        )
        assert (
            subprocess.run(
                ["docker", "exec", cluster.container(host), "test", "-e", "/etc/taskfleet/authkey"],
                timeout=60,
                check=False,
            ).returncode
            == 1
        )

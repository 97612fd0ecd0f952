"""The simulated lab: machines, SSH with exact host keys, sudo, inventory, idempotent up."""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
from pathlib import Path

import docker
import pytest

from taskfleet.ops import lab as labmod

from .conftest import REPO, Lab, ssh_argv


def _env(**extra: str) -> dict[str, str]:
    env = {**os.environ, "ANSIBLE_CONFIG": str(REPO / "deploy" / "ansible.cfg")}
    env["ANSIBLE_HOST_KEY_CHECKING"] = "True"  # never let an outer setting relax it
    env.update(extra)
    return env


def _bin(tool: str) -> str:
    return str(Path(sys.executable).with_name(tool))


def _lab_containers(lab: Lab) -> dict[str, str]:
    client = docker.from_env()
    boxes = client.containers.list(
        all=True,
        filters={"label": [f"{labmod.LABEL_LAB}={lab.name}", f"{labmod.LABEL_ROLE}=lab-host"]},
    )
    return {b.labels[labmod.LABEL_HOST]: f"{b.id} {b.status}" for b in boxes}


def test_hosts_run_at_the_contract_addresses(lab: Lab) -> None:
    base = lab.cfg.subnet.network_address
    expected = {"master": str(base + 10), "outsider": str(base + 99)}
    expected |= {f"worker{i}": str(base + 10 + i) for i in range(1, lab.cfg.workers + 1)}
    assert lab.hosts == expected
    client = docker.from_env()
    for host, ip in expected.items():
        box = client.containers.get(f"taskfleet-{lab.name}-{host}")
        assert box.status == "running", host
        assert box.attrs["NetworkSettings"]["Networks"][lab.network]["IPAddress"] == ip
        assert box.labels[labmod.LABEL_MANAGED] == "true"


def test_ansible_ping_succeeds_on_every_host_with_strict_host_keys(lab: Lab) -> None:
    # The json callback gives one parseable document: host → result.
    env = _env(ANSIBLE_LOAD_CALLBACK_PLUGINS="1", ANSIBLE_STDOUT_CALLBACK="ansible.posix.json")
    proc = subprocess.run(
        [_bin("ansible"), "all", "-i", str(lab.inventory_dir), "-m", "ansible.builtin.ping"],
        capture_output=True,
        text=True,
        timeout=180,
        env=env,
        cwd=REPO,
    )
    assert proc.returncode == 0, proc.stdout + proc.stderr
    results = json.loads(proc.stdout)["plays"][0]["tasks"][0]["hosts"]
    assert {h: r.get("ping") for h, r in results.items()} == dict.fromkeys(lab.hosts, "pong")


def test_deploy_user_logs_in_with_the_key_and_has_passwordless_sudo(lab: Lab) -> None:
    for host in lab.hosts:
        proc = lab.ssh(host, "id -un; hostname; sudo -n id -u")
        assert proc.returncode == 0, f"{host}: {proc.stderr}"
        assert proc.stdout.split() == ["deploy", host, "0"], host


def test_root_login_and_unknown_users_are_refused(lab: Lab) -> None:
    for user in ("root", "nobody"):
        proc = lab.ssh("master", "true", user=user, timeout=30)
        assert proc.returncode == 255
        assert "Permission denied" in proc.stderr


def test_known_hosts_is_exact_one_distinct_key_per_host(lab: Lab) -> None:
    lines = lab.known_hosts.read_text().splitlines()
    keys = {}
    for line in lines:
        names, keytype, blob = line.split()
        assert keytype == "ssh-ed25519"
        keys[names.split(",")[1]] = blob
    assert set(keys) == set(lab.hosts)
    assert len(set(keys.values())) == len(keys), "every host must have its own host key"
    # What each sshd really presents is the key written on the control side.
    for host, ip in lab.hosts.items():
        scan = subprocess.run(
            ["ssh-keyscan", "-t", "ed25519", "-T", "5", ip],
            capture_output=True,
            text=True,
            timeout=30,
        )
        assert scan.stdout.split()[2] == keys[host], host


def test_a_wrong_host_key_is_refused(lab: Lab, tmp_path: Path) -> None:
    # The master's address listed with worker1's key: a man in the middle.
    worker_key = next(
        line.split(None, 1)[1]
        for line in lab.known_hosts.read_text().splitlines()
        if line.split(",")[1] == "worker1"
    )
    wrong = tmp_path / "known_hosts_wrong"
    wrong.write_text(f"{lab.hosts['master']} {worker_key}\n")
    proc = subprocess.run(
        ssh_argv(lab.key, wrong, lab.hosts["master"], "echo reached"),
        capture_output=True,
        text=True,
        timeout=30,
    )
    assert proc.returncode == 255
    assert "reached" not in proc.stdout
    assert "Host key verification failed" in proc.stderr

    # An empty known_hosts: no trust on first use either.
    empty = tmp_path / "known_hosts_empty"
    empty.write_text("")
    proc = subprocess.run(
        ssh_argv(lab.key, empty, lab.hosts["master"], "echo reached"),
        capture_output=True,
        text=True,
        timeout=30,
    )
    assert proc.returncode == 255
    assert "Host key verification failed" in proc.stderr
    assert empty.read_text() == "", "ssh must not have learned the key"


def test_inventory_groups_and_connection_variables(lab: Lab) -> None:
    proc = subprocess.run(
        [_bin("ansible-inventory"), "-i", str(lab.inventory_dir), "--list"],
        capture_output=True,
        text=True,
        timeout=60,
        env=_env(),
        cwd=REPO,
    )
    assert proc.returncode == 0, proc.stderr
    inv = json.loads(proc.stdout)
    assert inv["taskfleet_master"]["hosts"] == ["master"]
    assert sorted(inv["taskfleet_workers"]["hosts"]) == sorted(lab.workers)
    # The outsider is in `all` (ungrouped) and in no group of ours.
    groups_with_outsider = [
        g for g, v in inv.items() if isinstance(v, dict) and "outsider" in v.get("hosts", [])
    ]
    assert groups_with_outsider == ["ungrouped"]
    hostvars = inv["_meta"]["hostvars"]
    assert set(hostvars) == set(lab.hosts)
    for host, ip in lab.hosts.items():
        hv = hostvars[host]
        assert hv["ansible_host"] == ip
        assert hv["ansible_user"] == "deploy"
        assert Path(hv["ansible_ssh_private_key_file"]) == lab.key
        assert f"-o UserKnownHostsFile={lab.known_hosts}" in hv["ansible_ssh_common_args"]
        assert "-o StrictHostKeyChecking=yes" in hv["ansible_ssh_common_args"]


def test_hosts_start_without_docker_and_use_the_lab_apt_cache(lab: Lab) -> None:
    if os.environ.get("TASKFLEET_E2E_REUSE_LAB") == "1":
        pytest.skip("TASKFLEET_E2E_REUSE_LAB=1: the reused lab may already have Docker")
    proxy = f"http://{lab.cfg.aptcache_ip}:{labmod.APT_CACHE_PORT}"
    for host in lab.hosts:
        proc = lab.ssh(
            host,
            "command -v dockerd || echo no-dockerd; cat /etc/apt/apt.conf.d/01proxy; "
            "cat /etc/default/docker",
        )
        assert proc.returncode == 0, proc.stderr
        assert "no-dockerd" in proc.stdout, host
        assert f'Acquire::http::Proxy "{proxy}";' in proc.stdout, host
        assert "DOCKER_ALLOW_IPV6_ON_IPV4_INTERFACE=1" in proc.stdout, host
    # The cache answers on the lab network (from a lab host, as apt would ask it).
    proc = lab.ssh("worker1", f"curl -sf -o /dev/null -w '%{{http_code}}' {proxy}/acng-report.html")
    assert proc.stdout == "200", proc.stderr


def test_make_lab_again_keeps_every_running_host(lab: Lab) -> None:
    before = _lab_containers(lab)
    files = {p: p.read_bytes() for p in (lab.cfg.hosts_file, lab.known_hosts, lab.key)}
    proc = subprocess.run(
        ["make", "--no-print-directory", "lab", f"LAB_WORKERS={lab.cfg.workers}"],
        capture_output=True,
        text=True,
        timeout=300,
        cwd=REPO,
    )
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert _lab_containers(lab) == before
    assert {p: p.read_bytes() for p in files} == files
    for host in lab.hosts:
        assert re.search(rf"host {host}\s.*: kept$", proc.stdout, re.M), proc.stdout
    assert "created" not in proc.stdout


def test_more_workers_add_a_host_and_fewer_remove_it(lab: Lab) -> None:
    n = lab.cfg.workers
    extra = f"worker{n + 1}"
    before = _lab_containers(lab)
    try:
        lab.up(workers=n + 1)
        after = _lab_containers(lab)
        assert set(after) == set(before) | {extra}
        assert {h: after[h] for h in before} == before, "existing hosts must be kept"
        assert lab.ssh(extra, "sudo -n true").returncode == 0
        assert f"{extra}:" in lab.cfg.hosts_file.read_text()
    finally:
        lab.up(workers=n)
    assert _lab_containers(lab) == before
    assert f"{extra}:" not in lab.cfg.hosts_file.read_text()
    volumes = docker.from_env().volumes.list(filters={"label": [f"{labmod.LABEL_HOST}={extra}"]})
    assert [v.name for v in volumes if v.attrs["Labels"].get(labmod.LABEL_LAB) == lab.name] == []


def test_lab_status_lists_every_host_running(lab: Lab) -> None:
    proc = subprocess.run(
        [sys.executable, "-m", "taskfleet.ops.lab", "status", "--json"],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert proc.returncode == 0, proc.stderr
    rows = {r["host"]: r for r in json.loads(proc.stdout)}
    assert set(rows) == {*lab.hosts, "aptcache"}
    for host, ip in lab.hosts.items():
        assert (rows[host]["address"], rows[host]["state"], rows[host]["service"]) == (
            ip,
            "running",
            "yes",
        ), host
    assert rows["outsider"]["group"] == "-"


@pytest.mark.parametrize(
    ("env", "message"),
    [
        ({"LAB_WORKERS": "0"}, "LAB_WORKERS='0' must be a whole number from 1 to 80"),
        ({"TASKFLEET_LAB": "Bad_Name"}, "TASKFLEET_LAB='Bad_Name' is not a valid lab name"),
        ({"TASKFLEET_LAB_SUBNET": "8.8.8.0/24"}, "must be a private /24 or larger"),
        ({"DOCKER_HOST": "unix:///nonexistent.sock"}, "the Docker engine does not answer"),
    ],
)
def test_bad_settings_fail_with_one_line(lab: Lab, env: dict[str, str], message: str) -> None:
    proc = subprocess.run(
        [sys.executable, "-m", "taskfleet.ops.lab", "up"],
        capture_output=True,
        text=True,
        timeout=60,
        env={**os.environ, **env},
    )
    assert proc.returncode == 1
    assert proc.stdout == ""
    assert proc.stderr.startswith("taskfleet: error: ")
    assert message in proc.stderr
    assert len(proc.stderr.strip().splitlines()) == 1, proc.stderr


def test_a_second_lab_on_a_taken_subnet_fails_and_leaves_nothing(lab: Lab, tmp_path: Path) -> None:
    name = f"{lab.name}-clash"
    env = {
        **os.environ,
        "TASKFLEET_LAB": name,
        "TASKFLEET_LAB_SUBNET": str(lab.cfg.subnet),
        "TASKFLEET_LAB_INVENTORY": str(tmp_path / "inventory"),
        "TASKFLEET_LAB_APT_CACHE": "0",
    }
    proc = subprocess.run(
        [sys.executable, "-m", "taskfleet.ops.lab", "up"],
        capture_output=True,
        text=True,
        timeout=300,
        env=env,
    )
    assert proc.returncode == 1
    assert proc.stderr.strip().splitlines() == [
        f"taskfleet: error: subnet {lab.cfg.subnet} overlaps another Docker network or route"
        " — pick a free one with TASKFLEET_LAB_SUBNET=172.28.N.0/24"
    ]
    client = docker.from_env()
    selector = {"label": [f"{labmod.LABEL_LAB}={name}"]}
    assert client.containers.list(all=True, filters=selector) == []
    assert client.networks.list(filters=selector) == []
    assert client.volumes.list(filters=selector) == []
    assert not (tmp_path / "inventory" / "hosts.yml").exists()

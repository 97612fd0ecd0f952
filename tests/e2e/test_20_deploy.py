"""The Ansible deploy on the simulated lab: deploy/site.yml over real SSH onto
machines that start without a Docker engine.

One deploy (module fixture ``deployed``) is shared by every test here: its
smoke job must pass for all worker hosts, a second run must change nothing,
``--check --diff`` must run clean, the master port must be closed to the
outsider and open to the workers, a wrong key must be refused, the key must
leak nowhere, a bad bind address must stop the deploy in preflight, the key
can be rotated, and a fourth worker host changes only itself and the master's
firewall. The lab is left as it was found (1 master + 3 worker hosts, deployed).

``TASKFLEET_E2E_IMAGES_MANIFEST`` (developers only) deploys the images of
another manifest than .build/images.json.
"""

from __future__ import annotations

import os
import re
import shlex
import shutil
import subprocess
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

from tests.e2e.conftest import Lab

pytestmark = pytest.mark.timeout(1800)

REPO = Path(__file__).resolve().parents[2]
BIN = Path(sys.executable).parent
PORT = 7451
SECRET = "/run/secrets/taskfleet_authkey"
E2E_LABEL = "io.taskfleet.e2e=deploy"
RECAP = re.compile(
    r"^(?P<host>\S+)\s*:\s*ok=(?P<ok>\d+)\s+changed=(?P<changed>\d+)\s+"
    r"unreachable=(?P<unreachable>\d+)\s+failed=(?P<failed>\d+)",
    re.M,
)

# Every ansible-playbook output of this module: the leak test reads them all.
OUTPUTS: list[str] = []


@dataclass
class Run:
    rc: int
    out: str
    seconds: float

    def recap(self) -> dict[str, dict[str, int]]:
        return {
            m["host"]: {k: int(m[k]) for k in ("ok", "changed", "unreachable", "failed")}
            for m in RECAP.finditer(self.out)
        }

    def changed_tasks(self) -> list[tuple[str, str]]:
        """(task header, host) for every task result reported as changed."""
        found, task = [], ""
        for line in self.out.splitlines():
            if line.startswith("TASK ["):
                task = line[6 : line.index("]")]
            elif m := re.match(r"changed: \[([^\]]+)\]", line):
                found.append((task, m[1].split(" -> ")[0]))
        return found

    def tail(self, n: int = 6000) -> str:
        return self.out[-n:]


def playbook(inventory: Path, name: str, *extra: str, timeout: float = 1500) -> Run:
    argv = [str(BIN / "ansible-playbook"), "-i", str(inventory), str(REPO / "deploy" / name)]
    manifest = os.environ.get("TASKFLEET_E2E_IMAGES_MANIFEST")
    if manifest:
        argv += ["-e", f"taskfleet_images_manifest={manifest}"]
    return run_deploy([*argv, *extra], timeout)


def run_deploy(argv: list[str], timeout: float = 1500) -> Run:
    """Run a deploy command (ansible-playbook, make deploy) from the repository, uncoloured;
    its output joins OUTPUTS, which the leak test reads."""
    env = {
        **os.environ,
        "ANSIBLE_CONFIG": str(REPO / "deploy/ansible.cfg"),
        "ANSIBLE_NOCOLOR": "1",
        "ANSIBLE_FORCE_COLOR": "0",
    }
    started = time.monotonic()
    proc = subprocess.run(
        argv, capture_output=True, text=True, timeout=timeout, env=env, cwd=REPO, check=False
    )
    run = Run(proc.returncode, proc.stdout + proc.stderr, time.monotonic() - started)
    OUTPUTS.append(run.out)
    return run


def sh(lab: Lab, host: str, command: str, timeout: float = 120) -> subprocess.CompletedProcess[str]:
    return lab.ssh(host, command, timeout=timeout)


def authkey(lab: Lab) -> str:
    return (lab.inventory_dir / "secrets" / "authkey").read_text().strip()


def master_ip(lab: Lab) -> str:
    return lab.hosts["master"]


def connect_from(lab: Lab, host: str) -> subprocess.CompletedProcess[str]:
    """A bounded TCP connect from ``host`` to the master port (3 s timeout)."""
    probe = (
        "import socket, sys\n"
        "try:\n"
        f"    socket.create_connection(({master_ip(lab)!r}, {PORT}), timeout=3).close()\n"
        "except OSError as exc:\n"
        "    print(type(exc).__name__, exc); sys.exit(1)\n"
        "print('connected')\n"
    )
    return sh(lab, host, f"python3 -c {shlex.quote(probe)}", timeout=30)


def one_off(
    lab: Lab, host: str, key_path: str, *args: str, timeout: int = 60
) -> subprocess.CompletedProcess[str]:
    """Run the taskfleet CLI on ``host`` in a one-off container with ``key_path`` mounted."""
    image = sh(
        lab,
        host,
        "sudo docker inspect -f '{{.Config.Image}}' "
        + ("taskfleet-master" if host == "master" else "taskfleet-worker-1"),
    )
    assert image.returncode == 0, image.stderr
    argv = [
        "sudo",
        "timeout",
        str(timeout),
        "docker",
        "run",
        "--rm",
        "--network",
        "host",
        "--label",
        "io.taskfleet.managed=true",
        "--label",
        E2E_LABEL,
        "--mount",
        f"type=bind,source={key_path},target={SECRET},readonly",
        image.stdout.strip(),
        *args,
    ]
    return sh(lab, host, shlex.join(argv), timeout=timeout + 60)


def write_key(lab: Lab, host: str, path: str, content: str) -> None:
    """Install a key file the way the deploy does (0400, uid 10001), content via stdin."""
    proc = subprocess.run(
        [
            "ssh",
            "-i",
            str(lab.key),
            "-o",
            f"UserKnownHostsFile={lab.known_hosts}",
            "-o",
            "StrictHostKeyChecking=yes",
            "-o",
            "BatchMode=yes",
            f"deploy@{lab.hosts[host]}",
            f"sudo sh -c 'umask 077; cat > {path}; chown 10001:10001 {path}; chmod 0400 {path}'",
        ],
        input=content,
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert proc.returncode == 0, proc.stderr


@pytest.fixture(scope="module")
def deployed(lab: Lab) -> Iterator[Run]:
    """deploy/site.yml once on the (fresh) lab; the images are built first if needed."""
    if not os.environ.get("TASKFLEET_E2E_IMAGES_MANIFEST"):
        build = subprocess.run(
            [sys.executable, "-m", "taskfleet.ops.images", "build"],
            capture_output=True,
            text=True,
            timeout=1800,
            cwd=REPO,
            check=False,
        )
        assert build.returncode == 0, build.stdout[-2000:] + build.stderr[-2000:]
    run = playbook(lab.inventory_dir, "site.yml")
    print(f"[deploy] first deploy: {run.seconds:.1f} s")
    if run.rc != 0:
        pytest.fail(f"deploy/site.yml failed (exit {run.rc}):\n{run.tail()}", pytrace=False)
    yield run


def test_deploy_runs_master_and_workers_and_smoke_covers_every_worker_host(
    lab: Lab, deployed: Run
) -> None:
    summary = re.search(r"worker hosts: (.*) \(items each\)", deployed.out)
    assert summary, deployed.tail()
    hosts = dict(pair.split("=") for pair in summary[1].split(", "))
    assert sorted(hosts) == sorted(lab.workers) and all(int(n) > 0 for n in hosts.values())
    assert re.search(r"items verified: (\d+) of \1\b", deployed.out), deployed.tail()
    assert "workers: 6" in deployed.out

    master = sh(
        lab,
        "master",
        "sudo docker inspect -f "
        "'{{.HostConfig.NetworkMode}} {{.State.Running}} "
        "{{.HostConfig.RestartPolicy.Name}} "
        '{{index .Config.Labels "io.taskfleet.role"}}\' taskfleet-master',
    )
    assert master.stdout.split() == ["host", "true", "unless-stopped", "master"], master
    for host in lab.workers:
        ps = sh(
            lab,
            host,
            "sudo docker ps --filter label=io.taskfleet.role=worker "
            "--format '{{.Names}} {{.Label \"io.taskfleet.inventory_host\"}}'",
        )
        assert sorted(ps.stdout.split("\n")[:-1]) == [
            f"taskfleet-worker-1 {host}",
            f"taskfleet-worker-2 {host}",
        ], ps
    key = sh(lab, "worker1", "sudo stat -c '%a %u %g' /etc/taskfleet/authkey")
    assert key.stdout.split() == ["400", "10001", "10001"], key
    local = (lab.inventory_dir / "secrets" / "authkey").stat().st_mode & 0o777
    assert local == 0o600


def test_second_deploy_changes_nothing(lab: Lab, deployed: Run) -> None:
    run = playbook(lab.inventory_dir, "site.yml")
    print(f"[deploy] idempotent second deploy: {run.seconds:.1f} s")
    assert run.rc == 0, run.tail()
    recap = run.recap()
    assert set(recap) == {"master", *lab.workers}, recap
    assert all(r["changed"] == 0 and r["failed"] == 0 for r in recap.values()), (
        recap,
        run.changed_tasks(),
    )


def test_check_diff_runs_clean(lab: Lab, deployed: Run) -> None:
    run = playbook(lab.inventory_dir, "site.yml", "--check", "--diff")
    assert run.rc == 0, run.tail()
    assert all(r["changed"] == 0 for r in run.recap().values()), run.changed_tasks()


def test_master_port_is_closed_to_the_outsider_and_open_to_workers(lab: Lab, deployed: Run) -> None:
    outsider = connect_from(lab, "outsider")
    assert outsider.returncode == 1 and "connected" not in outsider.stdout, outsider
    assert "timed out" in outsider.stdout or "refused" in outsider.stdout.lower(), outsider
    worker = connect_from(lab, "worker1")
    assert worker.returncode == 0 and worker.stdout.strip() == "connected", worker
    # The drop rule is ours: its counter saw the outsider's packets.
    table = sh(lab, "master", "sudo nft list table inet taskfleet")
    assert re.search(rf"tcp dport {PORT} counter packets [1-9]\d* bytes \d+ drop", table.stdout)
    # Docker's own tables are still there (no `flush ruleset`).
    tables = sh(lab, "master", "sudo nft list tables").stdout
    assert "inet taskfleet" in tables and ("ip nat" in tables or "ip filter" in tables), tables


def test_worker_with_a_wrong_authkey_is_rejected(lab: Lab, deployed: Run) -> None:
    wrong = "0123456789abcdef" * 4
    write_key(lab, "worker1", "/tmp/tf-e2e-wrongkey", wrong)
    try:
        run = one_off(
            lab,
            "worker1",
            "/tmp/tf-e2e-wrongkey",
            "worker",
            "--master",
            f"{master_ip(lab)}:{PORT}",
            "--authkey-file",
            SECRET,
            "--name",
            "e2e-wrongkey",
            "--host-label",
            "e2e-wrongkey",
        )
    finally:
        sh(lab, "worker1", "sudo rm -f /tmp/tf-e2e-wrongkey")
    assert run.returncode not in (0, 124), run  # rejected, not hung until `timeout`
    assert "refused our authkey" in run.stderr, run.stderr
    assert "Traceback" not in run.stderr
    log = sh(lab, "master", "sudo docker logs --since 5m taskfleet-master 2>&1")
    assert f"refused {lab.hosts['worker1']}:" in log.stdout and "wrong authkey" in log.stdout


def test_wrong_bind_ip_stops_the_deploy_in_preflight_before_any_change(
    lab: Lab, deployed: Run, tmp_path: Path
) -> None:
    inventory = tmp_path / "inventory"
    (inventory / "host_vars").mkdir(parents=True)
    shutil.copy(lab.inventory_dir / "hosts.yml", inventory / "hosts.yml")
    (inventory / "group_vars").symlink_to((lab.inventory_dir / "group_vars").resolve())
    # An address no lab host has (never contacted: preflight only compares it).
    (inventory / "host_vars" / "worker2.yml").write_text("taskfleet_bind_ip: 10.254.254.2\n")
    before = sh(lab, "worker2", "sudo docker ps -q --no-trunc | sort").stdout
    run = playbook(inventory, "site.yml")
    assert run.rc != 0
    assert "worker2: taskfleet_bind_ip '10.254.254.2' is not an address of this host" in run.out
    assert re.search(rf"\(it has: [^)]*{re.escape(lab.hosts['worker2'])}", run.out), run.tail()
    assert "set taskfleet_bind_ip for worker2 in host_vars" in run.out
    assert "PLAY [Prepare the hosts" not in run.out, "a change phase ran after preflight failed"
    assert all(r["changed"] == 0 for r in run.recap().values()), run.recap()
    assert not (inventory / "secrets").exists()
    assert sh(lab, "worker2", "sudo docker ps -q --no-trunc | sort").stdout == before


def test_deploy_refuses_to_run_without_its_ansible_cfg(
    lab: Lab, deployed: Run, tmp_path: Path
) -> None:
    # Without deploy/ansible.cfg, Ansible would read inventory/<env>/secrets/authkey
    # as an inventory source: the deploy must stop before anything changes.
    env = {k: v for k, v in os.environ.items() if not k.startswith("ANSIBLE_")}
    proc = subprocess.run(
        [
            str(BIN / "ansible-playbook"),
            "-i",
            str(lab.inventory_dir),
            str(REPO / "deploy" / "site.yml"),
        ],
        capture_output=True,
        text=True,
        timeout=300,
        env=env,
        cwd=tmp_path,
        check=False,
    )
    out = proc.stdout + proc.stderr
    OUTPUTS.append(out)
    assert proc.returncode != 0
    assert "deploy/ansible.cfg is not in effect" in out, out[-3000:]
    assert "PLAY [Prepare the hosts" not in out, "a change phase ran without the settings"


def test_rotate_authkey_replaces_the_key_everywhere_and_refuses_the_old(
    lab: Lab, deployed: Run
) -> None:
    old = authkey(lab)
    labels = (
        "sudo docker inspect -f '{{index .Config.Labels \"io.taskfleet.authkey-fingerprint\"}}' "
    )
    old_fp = sh(lab, "master", labels + "taskfleet-master").stdout.strip()
    run = playbook(lab.inventory_dir, "rotate-authkey.yml")
    assert run.rc == 0, run.tail()
    assert "taskfleet smoke: OK" in run.out
    new = authkey(lab)
    assert new != old and len(new) >= 32
    assert sh(lab, "master", labels + "taskfleet-master").stdout.strip() != old_fp
    for host in lab.workers:
        fp = sh(lab, host, labels + "taskfleet-worker-1").stdout.strip()
        assert fp == sh(lab, "master", labels + "taskfleet-master").stdout.strip(), host

    status = ["status", "--master", f"{master_ip(lab)}:{PORT}", "--authkey-file", SECRET, "--json"]
    ok = one_off(lab, "worker1", "/etc/taskfleet/authkey", *status)
    assert ok.returncode == 0, ok
    write_key(lab, "worker1", "/tmp/tf-e2e-oldkey", old)
    try:
        refused = one_off(lab, "worker1", "/tmp/tf-e2e-oldkey", *status)
    finally:
        sh(lab, "worker1", "sudo rm -f /tmp/tf-e2e-oldkey")
    assert refused.returncode not in (0, 124) and "refused our authkey" in refused.stderr, refused
    OLD_KEYS.append(old)


OLD_KEYS: list[str] = []


def test_authkey_appears_in_no_inspect_process_list_log_or_ansible_output(
    lab: Lab, deployed: Run
) -> None:
    keys = [authkey(lab), *OLD_KEYS]
    for host in ["master", *lab.workers]:
        dump = sh(
            lab,
            host,
            "sudo docker ps -aq | xargs -r sudo docker inspect; ps auxww; "
            "for c in $(sudo docker ps -aq); do sudo docker logs $c 2>&1; done; "
            "sudo docker volume inspect taskfleet-journal 2>/dev/null; env",
            timeout=180,
        )
        assert dump.returncode == 0 and "taskfleet" in dump.stdout, dump.stderr
        for key in keys:
            assert key not in dump.stdout + dump.stderr, f"the authkey leaked on {host}"
    assert OUTPUTS
    for out in OUTPUTS:
        for key in keys:
            assert key not in out, "the authkey leaked into ansible-playbook output"
    # inventory/<env>/secrets/ sits inside the inventory folder: Ansible must not
    # read the key file as an inventory source (it would list the key as a host).
    listing = subprocess.run(
        [str(BIN / "ansible-inventory"), "-i", str(lab.inventory_dir), "--list"],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
        env={**os.environ, "ANSIBLE_CONFIG": str(REPO / "deploy/ansible.cfg")},
    )
    assert listing.returncode == 0 and '"taskfleet_master"' in listing.stdout, listing.stderr
    for key in keys:
        assert key not in listing.stdout + listing.stderr, "the authkey is read as inventory"


def test_per_host_worker_count_grows_and_shrinks(lab: Lab, deployed: Run, tmp_path: Path) -> None:
    def names(host: str) -> list[str]:
        ps = sh(
            lab,
            host,
            "sudo docker ps -a --filter label=io.taskfleet.role=worker --format '{{.Names}}'",
        )
        return sorted(ps.stdout.split())

    # The same inventory (same key) plus a host_vars override for worker1 only.
    inventory = tmp_path / "inventory"
    (inventory / "host_vars").mkdir(parents=True)
    shutil.copy(lab.inventory_dir / "hosts.yml", inventory / "hosts.yml")
    for shared in ("group_vars", "secrets"):
        (inventory / shared).symlink_to((lab.inventory_dir / shared).resolve())
    (inventory / "host_vars" / "worker1.yml").write_text("taskfleet_workers_per_host: 3\n")
    grown = playbook(inventory, "site.yml", "--tags", "workers")
    assert grown.rc == 0, grown.tail()
    assert names("worker1") == [f"taskfleet-worker-{i}" for i in (1, 2, 3)]
    assert names("worker2") == ["taskfleet-worker-1", "taskfleet-worker-2"]
    assert {h for _, h in grown.changed_tasks()} == {"worker1"}, grown.changed_tasks()

    shrunk = playbook(lab.inventory_dir, "site.yml", "--tags", "workers")
    assert shrunk.rc == 0, shrunk.tail()
    assert names("worker1") == ["taskfleet-worker-1", "taskfleet-worker-2"]
    assert {h for _, h in shrunk.changed_tasks()} == {"worker1"}, shrunk.changed_tasks()


def test_a_fourth_worker_host_changes_only_itself_and_the_master_firewall(
    lab: Lab, deployed: Run
) -> None:
    lab.up(workers=4)
    try:
        run = playbook(lab.inventory_dir, "site.yml")
        assert run.rc == 0, run.tail()
        recap = run.recap()
        assert recap["worker4"]["changed"] > 0, recap
        assert all(recap[h]["changed"] == 0 for h in ("worker1", "worker2", "worker3")), (
            recap,
            run.changed_tasks(),
        )
        master_changes = [task for task, host in run.changed_tasks() if host == "master"]
        assert master_changes and all(t.startswith("firewall : ") for t in master_changes), (
            master_changes
        )
        assert "worker4=" in run.out and "workers: 8" in run.out
        assert connect_from(lab, "worker4").stdout.strip() == "connected"
    finally:
        lab.up(workers=3)
        back = playbook(lab.inventory_dir, "site.yml")
    assert back.rc == 0, back.tail()
    assert "worker4" not in back.recap()

"""Mutual TLS on the deployed lab (issue 12): on by default, refusals, rotation, the CA.

Runs on the cluster test_20 deployed (with TLS: the default) and leaves it
deployed with TLS for test_30. It checks the files the deploy made and where
(modes, owners, SANs), that a peer holding the authkey but no certificate and
a worker with a certificate from another CA are refused (both sides say so),
that the control node's profile names its own certificate and opens the master, that
``make rotate-tls`` under a running job re-issues every certificate host by
host and loses nothing, that the CA key is vault-encrypted when a vault
password is configured, that ``taskfleet_tls: false`` still deploys, and that
no private key leaks anywhere.
"""

from __future__ import annotations

import hashlib
import json
import os
import shlex
import subprocess
import sys
import threading
import time
from pathlib import Path
from typing import Any

import pytest

from tests.e2e.conftest import REPO, Lab
from tests.e2e.test_20_deploy import (
    OUTPUTS,
    PORT,
    SECRET,
    TLS_ARGS,
    Run,
    master_ip,
    master_log_since,
    one_off,
    playbook,
    sh,
    write_key,
)
from tests.e2e.test_30_fabric import (
    LongJob,
    assert_exactly_once,
    inner,
    long_job_size,
    master_view,
)
from tests.tlscerts import CA

pytestmark = pytest.mark.timeout(1800)

BIN = Path(sys.executable).parent
TLS_HOST_DIR = "/etc/taskfleet/tls"


def ok(run: Run) -> Run:
    assert run.rc == 0, run.tail()
    return run


def secrets(lab: Lab) -> Path:
    return lab.inventory_dir / "secrets" / "tls"


def install_files(lab: Lab, host: str, folder: str, files: dict[str, bytes]) -> None:
    """Put files on ``host`` the way the deploy installs TLS files (0400, uid 10001)."""
    made = sh(lab, host, f"sudo install -d -m 0500 -o 10001 -g 10001 {folder}")
    assert made.returncode == 0, made.stderr
    for name, content in files.items():
        write_key(lab, host, f"{folder}/{name}", content.decode())


def wait_log(lab: Lab, text: str, timeout: float = 30) -> str:
    deadline = time.monotonic() + timeout
    while True:
        log = master_log_since(lab)
        if text in log:
            return log
        assert time.monotonic() < deadline, f"no {text!r} in the master's log:\n{log[-3000:]}"
        time.sleep(1)


def status_args(lab: Lab) -> list[str]:
    return ["status", "--master", f"{master_ip(lab)}:{PORT}", "--authkey-file", SECRET]


def fingerprints(lab: Lab) -> dict[str, str]:
    """sha256 of every host's installed certificate."""
    found = {}
    for host in ["master", *lab.workers]:
        out = sh(lab, host, f"sudo sha256sum {TLS_HOST_DIR}/host.crt")
        assert out.returncode == 0, out.stderr
        found[host] = out.stdout.split()[0]
    return found


@pytest.fixture(scope="module")
def deployed(lab: Lab) -> Lab:
    """The lab as test_20 leaves it (deployed, TLS on); deployed here when run alone."""
    running = sh(lab, "master", "sudo docker inspect -f '{{.State.Running}}' taskfleet-master")
    if running.stdout.strip() != "true":
        build = subprocess.run(
            [sys.executable, "-m", "taskfleet.ops.images", "build"],
            capture_output=True,
            text=True,
            timeout=1800,
            cwd=REPO,
            check=False,
        )
        assert build.returncode == 0, build.stdout[-2000:] + build.stderr[-2000:]
        ok(playbook(lab.inventory_dir, "site.yml"))
    return lab


class JobLoop(threading.Thread):
    """Squares smoke jobs one after another from ``host`` (``count`` one-item chunks each)
    until stopped, so that jobs are running through a whole roll however long it takes;
    every report is kept."""

    def __init__(self, lab: Lab, host: str, count: int) -> None:
        super().__init__(daemon=True)
        self.lab, self.host, self.count = lab, host, count
        self.reports: list[dict[str, Any]] = []
        self.current: LongJob | None = None
        self.stopping = threading.Event()

    def run(self) -> None:
        while not self.stopping.is_set():
            try:
                job = LongJob(self.lab, self.host, self.count)
            except AssertionError:  # the master is restarting: start once it answers
                time.sleep(2)
                continue
            self.current = job
            try:
                self.reports.append(job.report(timeout=900))
            finally:
                job.kill()

    def in_flight(self) -> bool:
        return self.current is not None and self.current.still_running()

    def finish(self) -> list[dict[str, Any]]:
        """Let the job in flight end (it must end well), then stop."""
        self.stopping.set()
        self.join(timeout=960)
        assert not self.is_alive(), "the last job did not end"
        return self.reports


def rotate_tls_watching(lab: Lab, jobs: JobLoop, log: Path) -> tuple[str, bool]:
    """``make rotate-tls`` on the lab; returns its output and whether a job was in
    flight when the master's turn began (the play after every worker host's)."""
    argv = [
        "make",
        "--no-print-directory",
        "rotate-tls",
        f"INVENTORY={lab.inventory_dir.name}",
        f"INVENTORY_DIR={lab.inventory_dir.resolve()}",
    ]
    env = {**os.environ, "ANSIBLE_NOCOLOR": "1", "ANSIBLE_FORCE_COLOR": "0"}
    in_flight_at_master: bool | None = None
    with open(log, "w") as fh:
        proc = subprocess.Popen(argv, stdout=fh, stderr=subprocess.STDOUT, cwd=REPO, env=env)
        deadline = time.monotonic() + 1800
        while proc.poll() is None:
            if time.monotonic() > deadline:
                proc.kill()
                raise AssertionError("rotate-tls did not finish in 30 min")
            if in_flight_at_master is None and "PLAY [Re-issue the master's" in log.read_text():
                in_flight_at_master = jobs.in_flight()
            time.sleep(1)
    out = log.read_text()
    OUTPUTS.append(out)
    assert proc.returncode == 0, out[-6000:]
    return out, bool(in_flight_at_master)


@pytest.fixture(scope="module")
def items_per_s(deployed: Lab) -> float:
    """This lab's speed for one-item chunks, so the rotation's job outlasts the rotation."""
    job = LongJob(deployed, deployed.workers[-1], 20_000)
    try:
        report = job.report(timeout=300)
    finally:
        job.kill()
    assert_exactly_once(report, 20_000)
    return float(report["items_per_s"])


def test_the_deploy_runs_mutual_tls_by_default_with_files_in_their_places(deployed: Lab) -> None:
    lab = deployed
    args = json.loads(
        inner(lab, "master", "docker", "inspect", "-f", "{{json .Args}}", "taskfleet-master")
    )
    assert args[-6:] == list(TLS_ARGS), args
    for host in ["master", *lab.workers]:
        # The glob needs root too: the folder is the containers' user's alone.
        listing = sh(
            lab, host, f"sudo sh -c \"stat -c '%n %a %u %g' {TLS_HOST_DIR} {TLS_HOST_DIR}/*\""
        )
        assert listing.stdout.split("\n")[:-1] == [
            f"{TLS_HOST_DIR} 500 10001 10001",
            f"{TLS_HOST_DIR}/ca.crt 400 10001 10001",
            f"{TLS_HOST_DIR}/host.crt 400 10001 10001",
            f"{TLS_HOST_DIR}/host.key 400 10001 10001",
        ], (host, listing)
    mounts = inner(
        lab, lab.workers[0], "docker", "inspect", "-f", "{{json .Mounts}}", "taskfleet-worker-1"
    )
    tls_mount = [m for m in json.loads(mounts) if m["Destination"] == "/run/secrets/taskfleet_tls"]
    assert tls_mount and tls_mount[0]["RW"] is False and tls_mount[0]["Source"] == TLS_HOST_DIR
    # On the control node: the CA, one certificate per host, the control node's own.
    folder = secrets(lab)
    expected = {"ca.crt", "ca.key", "client.crt", "client.key", "hosts"}
    assert {p.name for p in folder.iterdir()} == expected
    hosts = {p.name for p in (folder / "hosts").iterdir()}
    # (a host that left the inventory keeps its files: test_20 adds and removes worker4)
    assert hosts >= {f"{h}.{ext}" for h in ["master", *lab.workers] for ext in ("crt", "key")}
    for key in [folder / "ca.key", folder / "client.key", *(folder / "hosts").glob("*.key")]:
        assert key.stat().st_mode & 0o777 == 0o600, key
    # The master's certificate names its bind IP, and its expiry is visible.
    tls = master_view(lab)["master"]["tls"]
    assert tls["enabled"] is True and master_ip(lab) in tls["cert_names"]
    assert 364 < tls["cert_days_left"] <= 365 and tls["ca_days_left"] > 3600


def test_a_peer_holding_the_authkey_but_no_certificate_is_refused(deployed: Lab) -> None:
    lab = deployed
    plain = one_off(lab, "worker1", "/etc/taskfleet/authkey", *status_args(lab))
    assert plain.returncode == 2, plain  # status: the master cannot be reached
    assert plain.stderr.strip() == (
        f"taskfleet: error: the master at {master_ip(lab)}:{PORT} requires TLS — pass --tls-ca,"
        ' --tls-cert and --tls-key (or a --profile with a "tls" section; make deploy writes them'
        " to inventory/<env>/secrets/)"
    )
    # At once, or in the next per-source summary line when worker1 was refused just before.
    log = wait_log(lab, "plaintext peer (it sent no TLS hello; this master requires TLS)")
    assert f"refused {lab.hosts['worker1']}:" in log
    # TLS without a client certificate: refused before the authkey is even asked for.
    probe = (
        "import socket, ssl\n"
        "ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)\n"
        "ctx.load_verify_locations('/run/secrets/taskfleet_tls/ca.crt')\n"
        f"s = ctx.wrap_socket(socket.create_connection(({master_ip(lab)!r}, {PORT}), timeout=10),"
        f" server_hostname={master_ip(lab)!r})\n"
        "try:\n    s.recv(64); print('accepted')\n"
        "except ssl.SSLError as exc:\n    print('refused', exc.reason)\n"
    )
    image = inner(
        lab, "worker1", "docker", "inspect", "-f", "{{.Config.Image}}", "taskfleet-worker-1"
    )
    argv = [
        "sudo",
        "docker",
        "run",
        "--rm",
        "--network",
        "host",
        "--label",
        "io.taskfleet.managed=true",
        "--mount",
        f"type=bind,source={TLS_HOST_DIR},target=/run/secrets/taskfleet_tls,readonly",
        "--entrypoint",
        "python3",
        image.strip(),
        "-c",
        probe,
    ]
    raw = sh(lab, "worker1", shlex.join(argv))
    assert raw.stdout.strip() == "refused TLSV13_ALERT_CERTIFICATE_REQUIRED", raw
    wait_log(lab, "it sent no TLS client certificate")
    # The master keeps serving its own.
    good = one_off(lab, "worker1", "/etc/taskfleet/authkey", *status_args(lab), *TLS_ARGS)
    assert good.returncode == 0, good


def test_a_worker_with_a_certificate_from_another_ca_is_refused(
    deployed: Lab, tmp_path: Path
) -> None:
    lab = deployed
    forged = CA(tmp_path, "other").issue("worker1", (lab.hosts["worker1"],))
    folder = "/tmp/tf-e2e-otherca"
    install_files(
        lab,
        "worker1",
        folder,
        {
            "ca.crt": (secrets(lab) / "ca.crt").read_bytes(),  # the cluster's CA is public
            "host.crt": forged.cert.read_bytes(),
            "host.key": forged.key.read_bytes(),
        },
    )
    try:
        run = one_off(
            lab,
            "worker1",
            "/etc/taskfleet/authkey",
            "worker",
            "--master",
            f"{master_ip(lab)}:{PORT}",
            "--authkey-file",
            SECRET,
            "--name",
            "e2e-otherca",
            *TLS_ARGS,
            tls_dir=folder,
        )
    finally:
        sh(lab, "worker1", f"sudo rm -rf {folder}")
    assert run.returncode == 1, run
    assert run.stderr.strip().endswith(
        "/run/secrets/taskfleet_tls/host.crt: it is not issued by the master's CA — use a"
        " certificate issued by the cluster's CA (make deploy writes one to"
        " inventory/<env>/secrets/tls/)"
    ), run.stderr
    log = wait_log(lab, "its TLS certificate is not issued by the cluster's CA")
    assert f"refused {lab.hosts['worker1']}:" in log
    assert "e2e-otherca" not in json.dumps(master_view(lab)["workers"])


def test_the_control_nodes_profile_names_its_certificate_and_opens_the_master(
    deployed: Lab,
) -> None:
    lab = deployed
    profile = lab.inventory_dir / "secrets" / "client.json"
    assert json.loads(profile.read_text())["tls"] == {
        "ca": "tls/ca.crt",
        "cert": "tls/client.crt",
        "key": "tls/client.key",
    }
    run = subprocess.run(
        [str(BIN / "taskfleet"), "status", "--json", "--profile", str(profile)],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert run.returncode == 0, run.stderr
    assert json.loads(run.stdout)["master"]["tls"]["enabled"] is True
    # The same profile without its "tls" section: the master refuses the plaintext peer.
    plain = {k: v for k, v in json.loads(profile.read_text()).items() if k != "tls"}
    plain["authkey_file"] = str(profile.parent / plain["authkey_file"])
    bare = profile.parent / "plain-e2e.json"
    bare.write_text(json.dumps(plain))
    try:
        refused = subprocess.run(
            [str(BIN / "taskfleet"), "status", "--profile", str(bare)],
            capture_output=True,
            text=True,
            timeout=60,
            check=False,
        )
    finally:
        bare.unlink()
    assert refused.returncode == 2 and "requires TLS" in refused.stderr, refused.stderr


def test_rotate_tls_under_a_running_job_reissues_every_certificate_and_loses_nothing(
    deployed: Lab, items_per_s: float, tmp_path: Path
) -> None:
    lab = deployed
    host = lab.workers[-1]
    before = fingerprints(lab)
    not_after = master_view(lab)["master"]["tls"]["cert_not_after"]
    ca_before = (secrets(lab) / "ca.crt").read_bytes()
    client_before = (secrets(lab) / "client.crt").read_bytes()
    # Jobs of about a minute each, one after another for as long as the roll takes
    # (a roll's length depends on the machine's load, so no single job is sized for it).
    jobs = JobLoop(lab, host, long_job_size(items_per_s, 60))
    jobs.start()
    try:
        wait_for_job = time.monotonic() + 120
        while not jobs.in_flight():
            assert time.monotonic() < wait_for_job and jobs.is_alive(), "no job started"
            time.sleep(1)
        out, in_flight_at_master = rotate_tls_watching(lab, jobs, tmp_path / "rotate-tls.log")
        assert in_flight_at_master, "no job was running when the master's turn came"
        assert "taskfleet smoke: OK" in out, out[-4000:]
        # Host by host: each worker host is its own batch, waited for before the next.
        batches = [
            ln
            for ln in out.splitlines()
            if ln.startswith("TASK [Wait until the host's workers heartbeat to the master again]")
        ]
        assert len(batches) == len(lab.workers), batches
    finally:
        reports = jobs.finish()
    assert len(reports) >= 2, reports
    for report in reports:  # every job that ran through the roll: all right, each item once
        assert_exactly_once(report, jobs.count)
    after = fingerprints(lab)
    assert all(after[h] != before[h] for h in before), (before, after)
    assert (secrets(lab) / "ca.crt").read_bytes() == ca_before, "rotate-tls keeps the CA"
    assert (secrets(lab) / "client.crt").read_bytes() != client_before
    view = master_view(lab)
    assert view["master"]["tls"]["cert_not_after"] != not_after
    # Every worker came back with its new certificate and heartbeats.
    fresh = {w["host"] for w in view["workers"] if w["last_heartbeat_age_s"] < 10}
    assert fresh == set(lab.workers), view["workers"]
    label = '{{index .Config.Labels "io.taskfleet.tls-fingerprint"}}'
    for h in lab.workers:
        got = inner(lab, h, "docker", "inspect", "-f", label, "taskfleet-worker-1").strip()
        assert got == after[h][:16], h


def test_the_ca_key_is_vault_encrypted_when_a_vault_password_is_configured(
    deployed: Lab, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    lab = deployed
    password = tmp_path / "vault-password"
    password.write_text("e2e-tls-vault-password\n")
    fresh = tmp_path / "fresh"
    fresh.mkdir()
    (fresh / "hosts.yml").write_text((lab.inventory_dir / "hosts.yml").read_text())
    (fresh / "group_vars").symlink_to((lab.inventory_dir / "group_vars").resolve())
    make_ca = tmp_path / "ca.yml"
    make_ca.write_text(
        "- hosts: taskfleet_master\n  gather_facts: true\n  tasks:\n"
        + "".join(
            "    - ansible.builtin.include_role:\n"
            f"        name: tls\n        tasks_from: {part}.yml\n"
            for part in ("preflight", "ca")
        )
    )
    monkeypatch.delenv("ANSIBLE_VAULT_PASSWORD_FILE", raising=False)
    refused = playbook(fresh, str(make_ca), "-e", "taskfleet_tls_key_vault=always")
    assert refused.rc != 0 and "no vault password file is configured" in refused.out, refused.tail()
    assert not (fresh / "secrets" / "tls" / "ca.key").exists()
    monkeypatch.setenv("ANSIBLE_VAULT_PASSWORD_FILE", str(password))
    ok(playbook(fresh, str(make_ca)))  # auto: a password file is configured
    key = fresh / "secrets" / "tls" / "ca.key"
    assert key.read_text().startswith("$ANSIBLE_VAULT;1.1;AES256")
    assert key.stat().st_mode & 0o777 == 0o600
    plain = subprocess.run(
        [str(BIN / "ansible-vault"), "view", str(key)],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    # A bool first: the key itself must not reach an assertion message.
    is_key = plain.returncode == 0 and plain.stdout.startswith("-----BEGIN EC PRIVATE KEY-----")
    assert is_key, "the vault file does not decrypt to a PEM private key"
    ca = (fresh / "secrets" / "tls" / "ca.crt").read_text()
    assert ca.startswith("-----BEGIN CERTIFICATE-----")
    # A second run changes nothing (the encrypted key is read, not remade).
    again = ok(playbook(fresh, str(make_ca)))
    assert all(r["changed"] == 0 for r in again.recap().values()), again.changed_tasks()


def test_taskfleet_tls_false_still_deploys_a_plaintext_cluster(deployed: Lab) -> None:
    lab = deployed
    try:
        run = ok(playbook(lab.inventory_dir, "site.yml", "-e", "taskfleet_tls=false"))
        assert "taskfleet smoke: OK" in run.out
        args = json.loads(
            inner(lab, "master", "docker", "inspect", "-f", "{{json .Args}}", "taskfleet-master")
        )
        assert "--tls-ca" not in args
        plain = one_off(lab, "worker1", "/etc/taskfleet/authkey", *status_args(lab), "--json")
        assert plain.returncode == 0, plain
        assert json.loads(plain.stdout.splitlines()[-1])["master"]["tls"] == {"enabled": False}
    finally:
        back = playbook(lab.inventory_dir, "site.yml")
    assert back.rc == 0, back.tail()
    assert "taskfleet smoke: OK" in back.out


def test_no_private_key_appears_in_containers_processes_logs_or_ansible_output(
    deployed: Lab,
) -> None:
    lab = deployed
    folder = secrets(lab)
    keys = [folder / "ca.key", folder / "client.key", *(folder / "hosts").glob("*.key")]
    # The base64 body of each key: what a leak would contain, whatever the framing.
    bodies = []
    for key in keys:
        lines = key.read_text().strip().splitlines()
        assert lines[0].startswith("-----BEGIN"), key
        bodies.append("".join(lines[1:-1]))
    digest = {hashlib.sha256(b.encode()).hexdigest()[:8] for b in bodies}
    assert len(digest) == len(keys)  # distinct keys, read for real
    for host in ["master", *lab.workers]:
        dump = sh(
            lab,
            host,
            "sudo docker ps -aq | xargs -r sudo docker inspect; ps auxww; "
            "for c in $(sudo docker ps -aq); do sudo docker logs $c 2>&1; done; env; "
            "sudo docker images -q | xargs -r -n1 sudo docker history --no-trunc",
            timeout=180,
        )
        assert dump.returncode == 0 and "taskfleet" in dump.stdout, dump.stderr
        flat = dump.stdout.replace("\n", "")
        for body in bodies:
            assert body[:40] not in flat, f"a private key leaked on {host}"
    assert OUTPUTS
    for out in OUTPUTS:
        flat = out.replace("\n", "")
        for body in bodies:
            assert body[:40] not in flat, "a private key leaked into ansible-playbook output"

"""The firewall role's ufw backend and the Ansible Vault authkey on the lab.

Runs after test_20 (the cluster deployed with nftables) and leaves it that way
for test_30: nftables → ufw (the `inet taskfleet` table goes, ufw guards the
manager port, the smoke job still passes) → a client source added and removed
(the deny rule stays last, the stale rule is pruned) → an unchanged run →
back to nftables (taskfleet's ufw rules go, ufw is disabled again because
taskfleet enabled it, the chains' policies from before ufw — Docker's
FORWARD DROP — are back). Only ``--tags firewall`` (plus smoke once): the
rest of the cluster is untouched. Run alone, the file deploys the cluster first.
"""

from __future__ import annotations

import json
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from tests.e2e.conftest import Lab
from tests.e2e.test_20_deploy import PORT, Run, connect_from, playbook, sh

pytestmark = pytest.mark.timeout(900)

BIN = Path(sys.executable).parent
UFW = ("-e", "taskfleet_firewall_backend=ufw")
EXTRA_CLIENT = "192.0.2.7"  # TEST-NET-1: never contacted, only written into a rule
TABLE = "sudo nft list table inet taskfleet"
HOSTS_POLICIES = "sudo iptables -S | grep '^-P'; sudo ip6tables -S | grep '^-P'"


def ok(run: Run) -> Run:
    assert run.rc == 0, run.tail()
    return run


def ufw_rules(lab: Lab, host: str) -> list[str]:
    """taskfleet's ufw rules on ``host`` in ``ufw status numbered`` order."""
    status = sh(lab, host, "sudo ufw status numbered")
    assert status.returncode == 0, status
    return [line for line in status.stdout.splitlines() if "# taskfleet" in line]


def ufw_active(lab: Lab, host: str) -> bool:
    return "Status: active" in sh(lab, host, "sudo ufw status").stdout


def assert_port_guarded(lab: Lab) -> None:
    outsider = connect_from(lab, "outsider")
    assert outsider.returncode == 1 and "connected" not in outsider.stdout, outsider
    assert "timed out" in outsider.stdout or "refused" in outsider.stdout.lower(), outsider
    worker = connect_from(lab, "worker1")
    assert worker.returncode == 0 and worker.stdout.strip() == "connected", worker


@pytest.fixture(scope="module")
def cluster(lab: Lab) -> dict[str, str]:
    """The deployed nftables cluster (test_20 leaves it); its chain policies per host."""
    running = sh(lab, "master", "sudo docker inspect -f '{{.State.Running}}' taskfleet-master")
    if running.stdout.strip() != "true":  # this file run alone on a fresh lab
        build = subprocess.run(
            [sys.executable, "-m", "taskfleet.ops.images", "build"],
            capture_output=True,
            text=True,
            timeout=1800,
            check=False,
        )
        assert build.returncode == 0, build.stdout[-2000:] + build.stderr[-2000:]
        ok(playbook(lab.inventory_dir, "site.yml"))
    assert sh(lab, "master", TABLE).returncode == 0, "test_20 should leave the nftables table"
    return {h: sh(lab, h, HOSTS_POLICIES).stdout for h in ["master", *lab.workers]}


def test_ufw_backend_replaces_nftables_and_guards_the_manager_port(
    lab: Lab, cluster: dict[str, str]
) -> None:
    run = ok(playbook(lab.inventory_dir, "site.yml", "--tags", "firewall,smoke", *UFW))
    print(f"[ufw] nftables → ufw with smoke: {run.seconds:.1f} s")
    assert "taskfleet smoke: OK" in run.out and "workers: 6" in run.out, run.tail()
    for host in ["master", *lab.workers]:
        # No taskfleet table left: what guards the port now is ufw alone.
        assert sh(lab, host, TABLE).returncode != 0, host
        assert "taskfleet" not in sh(lab, host, "sudo cat /etc/nftables.conf").stdout, host
        assert ufw_active(lab, host), host
    rules = ufw_rules(lab, "master")
    allowed = sorted(
        re.findall(rf"{PORT}/tcp +ALLOW IN +(\S+) +# taskfleet manager client", "\n".join(rules))
    )
    # The worker hosts, and the control node (inventory/local/group_vars: client sources).
    assert allowed == sorted([*(lab.hosts[w] for w in lab.workers), lab.cfg.gateway]), rules
    deny = rf"{PORT}/tcp +DENY IN +Anywhere +# taskfleet manager others"
    assert re.search(deny, rules[-2]), rules
    assert any("22/tcp" in r and "# taskfleet admin ssh" in r for r in rules), rules
    assert [r for r in ufw_rules(lab, "worker1") if f"{PORT}/tcp" in r] == []
    assert_port_guarded(lab)
    # Docker's chains are still there and its containers run (smoke passed).
    assert "-N DOCKER" in sh(lab, "master", "sudo iptables -S").stdout


def test_ufw_keeps_the_deny_last_and_prunes_a_removed_client(
    lab: Lab, cluster: dict[str, str]
) -> None:
    extra = json.dumps({"taskfleet_firewall_client_sources": [EXTRA_CLIENT]})
    ok(playbook(lab.inventory_dir, "site.yml", "--tags", "firewall", *UFW, "-e", extra))
    rules = ufw_rules(lab, "master")
    assert any(EXTRA_CLIENT in r for r in rules), rules
    # The allow rule added after the deny was moved in front of it.
    last_allow = max(i for i, r in enumerate(rules) if "manager client" in r)
    first_deny = min(i for i, r in enumerate(rules) if "manager others" in r)
    assert last_allow < first_deny, rules
    assert_port_guarded(lab)

    run = ok(playbook(lab.inventory_dir, "site.yml", "--tags", "firewall", *UFW))
    assert not any(EXTRA_CLIENT in r for r in ufw_rules(lab, "master"))
    assert {h for _, h in run.changed_tasks()} == {"master"}, run.changed_tasks()


def test_a_second_ufw_run_changes_nothing(lab: Lab, cluster: dict[str, str]) -> None:
    run = ok(playbook(lab.inventory_dir, "site.yml", "--tags", "firewall", *UFW))
    print(f"[ufw] unchanged ufw run: {run.seconds:.1f} s")
    recap = run.recap()
    assert set(recap) == {"master", *lab.workers}, recap
    assert all(r["changed"] == 0 and r["failed"] == 0 for r in recap.values()), (
        recap,
        run.changed_tasks(),
    )


def test_back_to_nftables_removes_taskfleets_ufw_rules_and_restores_the_policies(
    lab: Lab, cluster: dict[str, str]
) -> None:
    run = ok(playbook(lab.inventory_dir, "site.yml", "--tags", "firewall"))
    print(f"[ufw] ufw → nftables: {run.seconds:.1f} s")
    for host in ["master", *lab.workers]:
        assert sh(lab, host, TABLE).returncode == 0, host
        # taskfleet enabled ufw, so it disabled it; no taskfleet rule is left.
        assert not ufw_active(lab, host), host
        left = sh(
            lab,
            host,
            "sudo grep -c 'comment=7461736b666c656574' /etc/ufw/user.rules /etc/ufw/user6.rules",
        )
        assert left.stdout.split() == ["/etc/ufw/user.rules:0", "/etc/ufw/user6.rules:0"], left
        # `ufw disable` sets every policy to ACCEPT; Docker's FORWARD DROP is back.
        assert sh(lab, host, HOSTS_POLICIES).stdout == cluster[host], host
    assert_port_guarded(lab)
    table = sh(lab, "master", TABLE).stdout
    assert re.search(rf"tcp dport {PORT} counter packets [1-9]\d* bytes \d+ drop", table), table


def test_vault_encrypted_authkey_is_created_and_deployed(
    lab: Lab, cluster: dict[str, str], tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    password = tmp_path / "vault-pass"
    password.write_text("e2e-vault-password\n")
    password.chmod(0o600)
    vault = ("--vault-password-file", str(password))

    # Creation: the role's generate step on a new inventory (control node only).
    # The role runs ansible-vault as a child process, which cannot see a
    # --vault-password-file given to ansible-playbook: the password comes from
    # ANSIBLE_VAULT_PASSWORD_FILE (or vault_password_file in ansible.cfg, or
    # taskfleet_authkey_vault_password_file). Without one: a clear failure.
    monkeypatch.delenv("ANSIBLE_VAULT_PASSWORD_FILE", raising=False)
    fresh = tmp_path / "fresh"
    fresh.mkdir()
    shutil.copy(lab.inventory_dir / "hosts.yml", fresh / "hosts.yml")
    (fresh / "group_vars").symlink_to((lab.inventory_dir / "group_vars").resolve())
    generate = tmp_path / "generate.yml"
    generate.write_text(
        "- hosts: taskfleet_master\n  gather_facts: false\n  tasks:\n"
        "    - ansible.builtin.include_role:\n        name: authkey\n"
        "        tasks_from: generate.yml\n"
    )
    refused = playbook(fresh, str(generate), "-e", "taskfleet_authkey_vault_encrypt=true")
    assert refused.rc != 0
    assert "needs a vault password file" in refused.out, refused.tail()
    assert not (fresh / "secrets").exists(), "refused, yet the secrets folder was made"
    monkeypatch.setenv("ANSIBLE_VAULT_PASSWORD_FILE", str(password))
    ok(playbook(fresh, str(generate), "-e", "taskfleet_authkey_vault_encrypt=true"))
    monkeypatch.delenv("ANSIBLE_VAULT_PASSWORD_FILE")
    created = fresh / "secrets" / "authkey"
    assert created.read_text().startswith("$ANSIBLE_VAULT;1.1;AES256")
    assert created.stat().st_mode & 0o777 == 0o600
    plain = subprocess.run(
        [str(BIN / "ansible-vault"), "view", str(created), *vault],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    # A bool first: the key itself must not reach an assertion message.
    key_ok = plain.returncode == 0 and re.fullmatch(r"[A-Za-z0-9]{64}\n?", plain.stdout) is not None
    assert key_ok, "the vault file does not decrypt to a 64-character key"

    # Use: the cluster's own key, vault-encrypted, deploys unchanged and smoke
    # passes (the password given on the command line this time).
    used = tmp_path / "used"
    (used / "secrets").mkdir(parents=True)
    shutil.copy(lab.inventory_dir / "hosts.yml", used / "hosts.yml")
    (used / "group_vars").symlink_to((lab.inventory_dir / "group_vars").resolve())
    enc = subprocess.run(
        [
            str(BIN / "ansible-vault"),
            "encrypt",
            "--output",
            str(used / "secrets" / "authkey"),
            *vault,
            str(lab.inventory_dir / "secrets" / "authkey"),
        ],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert enc.returncode == 0, enc.stderr
    assert (used / "secrets" / "authkey").read_text().startswith("$ANSIBLE_VAULT;")
    run = ok(playbook(used, "site.yml", "--tags", "authkey,smoke", *vault))
    assert "taskfleet smoke: OK" in run.out, run.tail()
    assert all(r["changed"] == 0 for r in run.recap().values()), run.changed_tasks()

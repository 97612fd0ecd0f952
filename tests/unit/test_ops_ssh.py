"""SSH connections that verify host keys, and the one-line errors of a failing host."""

from __future__ import annotations

from pathlib import Path

import paramiko
import pytest
from invoke.exceptions import UnexpectedExit
from invoke.runners import Result
from paramiko.ssh_exception import NoValidConnectionsError

from taskfleet.ops.inventory import Host
from taskfleet.ops.ssh import connect, explain, run_on_hosts


@pytest.fixture
def host(tmp_path: Path) -> Host:
    known = tmp_path / "known_hosts"
    blob = "AAAAC3NzaC1lZDI1NTE5AAAAIIVsjGZ0B5NzwklgHqJZ93dqvABaYEO0XMjxKhsy+DTW"
    known.write_text(f"192.0.2.11,worker1 ssh-ed25519 {blob}\n")
    return Host("worker1", "192.0.2.11", "deploy", 22, None, known)


def test_connections_trust_only_the_inventory_known_hosts(host: Host) -> None:
    conn = connect(host)
    client = conn.client
    # never Fabric's default AutoAddPolicy: unknown keys are refused, not learnt
    assert isinstance(client._policy, paramiko.RejectPolicy)
    assert list(client.get_host_keys().keys()) == ["192.0.2.11", "worker1"]
    assert len(client._system_host_keys.keys()) == 0  # not ~/.ssh/known_hosts
    # and no ~/.ssh/config may redirect the inventory's address, port or user
    assert (conn.host, conn.port, conn.user) == ("192.0.2.11", 22, "deploy")


def test_host_key_errors_say_which_file_and_what_to_do(host: Host) -> None:
    unknown = paramiko.SSHException("Server '192.0.2.11' not found in known_hosts")
    assert explain(host, unknown) == (
        f"host key of deploy@192.0.2.11:22 is unknown (not in {host.known_hosts}) — refusing to "
        "connect; add it after checking its fingerprint (ssh-keyscan)"
    )
    other = paramiko.RSAKey.generate(1024)
    changed = paramiko.BadHostKeyException("192.0.2.11", other, other)
    assert explain(host, changed) == (
        f"host key of deploy@192.0.2.11:22 does not match {host.known_hosts} — if the machine "
        "was rebuilt, check its new fingerprint and replace the line in that file"
    )


def test_connection_and_login_errors_are_one_line(host: Host) -> None:
    refused = NoValidConnectionsError({("192.0.2.11", 22): ConnectionRefusedError(111, "refused")})
    assert explain(host, refused).startswith("cannot reach deploy@192.0.2.11:22 (")
    assert explain(host, refused).endswith(") — is the host up and sshd listening?")
    assert explain(host, TimeoutError()) == (
        "cannot reach deploy@192.0.2.11:22 (TimeoutError) — is the host up and sshd listening?"
    )
    assert explain(host, paramiko.AuthenticationException("no")) == (
        "SSH login to deploy@192.0.2.11:22 with the default keys was refused — check "
        "ansible_user and the key"
    )


def failed(command: str, stderr: str, exited: int = 1) -> UnexpectedExit:
    return UnexpectedExit(Result(stdout="", stderr=stderr, command=command, exited=exited))


def test_remote_command_failures_quote_the_last_error_line(host: Host) -> None:
    assert explain(host, failed("sudo -n docker ps", "sudo: a password is required\n")) == (
        "sudo on worker1 asks for a password — the deploy user needs passwordless sudo (NOPASSWD)"
    )
    assert explain(host, failed("sudo -n docker ps", "sudo: docker: command not found\n")) == (
        "Docker is not installed on worker1 — run `make deploy` first"
    )
    assert explain(host, failed("docker stop x", "warning\nError: No such container: x\n")) == (
        "`docker stop x` failed (exit 1): Error: No such container: x"
    )


def test_a_failing_host_does_not_stop_the_others(host: Host) -> None:
    hosts = [
        Host(f"h{i}", f"192.0.2.{i}", "deploy", 22, None, host.known_hosts) for i in range(1, 6)
    ]

    def work(conn: object, h: Host) -> str:
        if h.name == "h3":
            raise failed("true", "boom")
        return h.address

    results = run_on_hosts(hosts, work, parallel=2)
    assert [(r.host, r.ok) for r in results] == [
        ("h1", True),
        ("h2", True),
        ("h3", False),
        ("h4", True),
        ("h5", True),
    ]
    assert results[2].error == "`true` failed (exit 1): boom"
    assert results[4].value == "192.0.2.5"

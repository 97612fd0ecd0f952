"""SSH to the inventory's hosts in parallel, with verified host keys.

Fabric's ``Connection`` accepts unknown host keys by default (paramiko's
``AutoAddPolicy``). Here every connection loads only the inventory's
known_hosts (``UserKnownHostsFile``, else ``~/.ssh/known_hosts``) and uses
``RejectPolicy``: an unknown or changed key fails that host with one line and
the other hosts carry on. ``run_on_hosts`` is a bounded thread pool returning
one ``HostResult`` per host (``run_one`` for a single host); nothing here
raises for a single host's failure.
"""

from __future__ import annotations

import os
import threading
import time
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import IO, Any, Generic, TypeVar

import paramiko
from fabric import Config, Connection
from invoke.exceptions import CommandTimedOut, UnexpectedExit
from paramiko.ssh_exception import NoValidConnectionsError

from taskfleet.ops.commands import Command, sh
from taskfleet.ops.errors import OpsError
from taskfleet.ops.inventory import Host

T = TypeVar("T")

#: At most this many hosts are worked on at once (env TASKFLEET_FAB_PARALLEL overrides).
DEFAULT_PARALLEL = 10
CONNECT_TIMEOUT = 10


@dataclass
class HostResult(Generic[T]):
    """What ``fn`` returned on one host, or the one-line error that stopped it."""

    host: str
    ok: bool
    value: T | None = None
    error: str | None = None
    seconds: float = 0.0


def user_known_hosts() -> Path:
    return Path(os.path.expanduser("~/.ssh/known_hosts"))


def connect(host: Host, timeout: float = CONNECT_TIMEOUT) -> Connection:
    """A Fabric Connection to ``host`` that only trusts the inventory's known_hosts.

    The connection is lazy; errors surface on first use and are turned into
    one-line HostErrors by ``explain``.
    """
    connect_kwargs: dict[str, Any] = {"banner_timeout": timeout, "auth_timeout": timeout}
    if host.key_file is not None:
        # Only the inventory's key: no agent, no ~/.ssh/id_* guessing (ansible_ssh_private_key_file
        # is what the deploy uses, so Fabric must succeed or fail the same way).
        connect_kwargs.update(
            key_filename=str(host.key_file), look_for_keys=False, allow_agent=False
        )
    # An explicit empty SSHConfig keeps ~/.ssh/config and /etc/ssh/ssh_config out: the
    # inventory alone decides address, port, user and key, as it does for Ansible.
    config = Config(ssh_config=paramiko.SSHConfig())
    conn = Connection(
        host.address,
        user=host.user,
        port=host.port,
        config=config,
        connect_timeout=int(timeout),
        connect_kwargs=connect_kwargs,
    )
    client: paramiko.SSHClient = conn.client
    client.set_missing_host_key_policy(paramiko.RejectPolicy())
    known = host.known_hosts or user_known_hosts()
    if known.is_file():
        client.load_host_keys(str(known))
    return conn


def explain(host: Host, exc: BaseException) -> str:
    """One line saying what went wrong on ``host`` and what to do about it."""
    where = f"{host.user}@{host.address}:{host.port}"
    known = host.known_hosts or user_known_hosts()
    if isinstance(exc, paramiko.BadHostKeyException):
        return (
            f"host key of {where} does not match {known} — if the machine was rebuilt, "
            "check its new fingerprint and replace the line in that file"
        )
    if isinstance(exc, paramiko.SSHException) and "not found in known_hosts" in str(exc):
        return (
            f"host key of {where} is unknown (not in {known}) — refusing to connect; "
            "add it after checking its fingerprint (ssh-keyscan)"
        )
    if isinstance(exc, paramiko.AuthenticationException):
        key = host.key_file or "the default keys"
        return f"SSH login to {where} with {key} was refused — check ansible_user and the key"
    if isinstance(exc, NoValidConnectionsError | OSError):
        reason = str(exc) or type(exc).__name__
        return f"cannot reach {where} ({reason}) — is the host up and sshd listening?"
    if isinstance(exc, CommandTimedOut):
        return f"command timed out after {exc.timeout}s on {host.name}: {exc.result.command}"
    if isinstance(exc, UnexpectedExit):
        result = exc.result
        lines = [
            ln.strip() for ln in (result.stderr or result.stdout or "").splitlines() if ln.strip()
        ]
        last = lines[-1] if lines else "no output"
        if "a password is required" in last:
            return (
                f"sudo on {host.name} asks for a password — the deploy user needs "
                "passwordless sudo (NOPASSWD)"
            )
        if "docker: command not found" in last or "docker: not found" in last:
            return f"Docker is not installed on {host.name} — run `make deploy` first"
        if "Cannot connect to the Docker daemon" in last:
            return (
                f"the Docker engine on {host.name} is not running — start it or re-run the deploy"
            )
        return f"`{result.command}` failed (exit {result.exited}): {last}"
    if isinstance(exc, OpsError):
        return str(exc)
    return f"{type(exc).__name__}: {exc}"


def run(conn: Connection, command: Command, timeout: float | None = 120, **kwargs: Any) -> str:
    """Run ``command`` (an argv list or a shell line) and return its stdout.

    Raises UnexpectedExit on a non-zero exit. stdin is never forwarded
    (in_stream=False): many threads share our stdin.
    """
    result = conn.run(sh(command), hide=True, in_stream=False, timeout=timeout, **kwargs)
    return str(result.stdout)


def parallelism() -> int:
    try:
        return max(1, int(os.environ.get("TASKFLEET_FAB_PARALLEL", DEFAULT_PARALLEL)))
    except ValueError:
        return DEFAULT_PARALLEL


def run_on_hosts(
    hosts: Sequence[Host], fn: Callable[[Connection, Host], T], parallel: int | None = None
) -> list[HostResult[T]]:
    """Call ``fn(connection, host)`` for every host, at most ``parallel`` at a time.

    A host whose connection or command fails gets ``ok=False`` and a one-line
    ``error``; the others are unaffected. Results keep the order of ``hosts``.
    """
    limit = min(parallel or parallelism(), max(1, len(hosts)))

    def one(host: Host) -> HostResult[T]:
        start = time.monotonic()
        conn = connect(host)
        try:
            value = fn(conn, host)
            return HostResult(host.name, True, value=value, seconds=time.monotonic() - start)
        except Exception as exc:  # one host's failure must not stop the others
            return HostResult(
                host.name, False, error=explain(host, exc), seconds=time.monotonic() - start
            )
        finally:
            conn.close()

    with ThreadPoolExecutor(max_workers=limit, thread_name_prefix="fab") as pool:
        return list(pool.map(one, hosts))


def run_one(host: Host, fn: Callable[[Connection, Host], T]) -> HostResult[T]:
    """``run_on_hosts`` for one host: its result, never an exception."""
    return run_on_hosts([host], fn, parallel=1)[0]


class PrefixWriter:
    """A file-like sink that writes complete lines, each prefixed, under a shared lock,
    so streams from many hosts interleave by line and never mid-line."""

    def __init__(self, prefix: str, out: IO[str], lock: threading.Lock) -> None:
        self.prefix = prefix
        self.out = out
        self.lock = lock
        self.buf = ""

    def write(self, data: str) -> int:
        self.buf += data
        *lines, self.buf = self.buf.split("\n")
        if lines:
            with self.lock:
                for line in lines:
                    self.out.write(f"{self.prefix}{line.rstrip(chr(13))}\n")
                self.out.flush()
        return len(data)

    def flush(self) -> None:
        pass

    def close(self) -> None:
        if self.buf:
            self.write("\n")

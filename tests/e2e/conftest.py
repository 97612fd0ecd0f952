"""Session fixtures for the end-to-end suite: one simulated lab for every e2e file.

The ``lab`` fixture brings the lab up with the same code as ``make lab``
(``taskfleet.ops.lab.up``), for the lab the environment names (default
``local``; ``TASKFLEET_LAB``/``TASKFLEET_LAB_SUBNET``/``TASKFLEET_LAB_INVENTORY``
let a developer run the suite against a lab of their own).

Lifecycle: at session start a lab left over from an earlier run (a failed CI
run, a developer's ``make lab``) is removed first, so the deploy always meets
freshly installed machines with no Docker engine; ``TASKFLEET_E2E_REUSE_LAB=1``
keeps it instead (fast iteration). The fixture does NOT tear the lab down at
session end: ``test_99_lab_down.py`` does, and a failed run stays inspectable.
"""

from __future__ import annotations

import os
import shlex
import subprocess
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path

import pytest

from taskfleet.ops import lab as labmod

REPO = Path(__file__).resolve().parents[2]


def ssh_argv(
    key: Path, known_hosts: Path, ip: str, command: str | Sequence[str], user: str = "deploy"
) -> list[str]:
    """argv for one non-interactive SSH command with strict host-key checking."""
    remote = command if isinstance(command, str) else shlex.join(command)
    return [
        "ssh",
        "-i",
        str(key),
        "-o",
        f"UserKnownHostsFile={known_hosts}",
        "-o",
        "StrictHostKeyChecking=yes",
        "-o",
        "GlobalKnownHostsFile=/dev/null",
        "-o",
        "BatchMode=yes",
        "-o",
        "IdentitiesOnly=yes",
        "-o",
        "ConnectTimeout=10",
        "-o",
        "LogLevel=ERROR",
        f"{user}@{ip}",
        remote,
    ]


@dataclass
class Lab:
    """Handle on the running lab that the e2e tests share."""

    cfg: labmod.LabConfig
    info: labmod.LabInfo

    @property
    def name(self) -> str:
        return self.cfg.name

    @property
    def inventory_dir(self) -> Path:
        return self.cfg.inventory_dir

    @property
    def hosts(self) -> dict[str, str]:
        """Inventory name → address, outsider included."""
        return dict(self.info.hosts)

    @property
    def workers(self) -> list[str]:
        return [h for h in self.info.hosts if h.startswith("worker")]

    @property
    def key(self) -> Path:
        return self.cfg.key

    @property
    def known_hosts(self) -> Path:
        return self.cfg.known_hosts

    @property
    def network(self) -> str:
        return self.cfg.network

    def container(self, host: str) -> str:
        """The Docker container name of a host (``taskfleet-<lab>-<host>``)."""
        return self.cfg.container(host)

    def ssh(
        self,
        host: str,
        command: str | Sequence[str],
        *,
        timeout: float = 120,
        check: bool = False,
        user: str = "deploy",
    ) -> subprocess.CompletedProcess[str]:
        """Run ``command`` on ``host`` as the deploy user (key + exact known_hosts)."""
        return subprocess.run(
            ssh_argv(self.key, self.known_hosts, self.hosts[host], command, user),
            capture_output=True,
            text=True,
            timeout=timeout,
            check=check,
        )

    def up(self, workers: int | None = None) -> Lab:
        """Re-run ``up`` (idempotent), optionally with another worker count; updates hosts."""
        if workers is not None and workers != self.cfg.workers:
            self.cfg = labmod.LabConfig(
                self.cfg.name,
                self.cfg.subnet,
                self.cfg.inventory_dir,
                workers,
                self.cfg.state_root,
                self.cfg.apt_cache,
            )
        self.info = labmod.up(self.cfg, log=_log)
        return self


def _log(msg: str) -> None:
    # Visible with -s; kept in the captured output of a failing test otherwise.
    print(f"[lab] {msg}", flush=True)


@pytest.fixture(scope="session")
def lab() -> Iterator[Lab]:
    try:
        cfg = labmod.LabConfig.from_env()
        if os.environ.get("TASKFLEET_E2E_REUSE_LAB") != "1":
            labmod.down(cfg, log=_log)  # the apt cache volume stays: installs stay fast
        info = labmod.up(cfg, log=_log)
    except labmod.LabError as exc:
        pytest.fail(f"the lab did not come up: {exc}", pytrace=False)
    yield Lab(cfg, info)
    # No teardown on purpose: tests/e2e/test_99_lab_down.py removes the lab.

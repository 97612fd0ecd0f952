"""Session fixtures for the end-to-end suite: one simulated lab for every e2e file.

The ``lab`` fixture brings the lab up with the same code as ``make lab``
(``taskfleet.ops.lab.up``). Which lab: the one ``TASKFLEET_LAB`` names (with
``TASKFLEET_LAB_SUBNET``/``TASKFLEET_LAB_INVENTORY``, exactly as ``make lab`` reads
them), else a lab of the suite's own, ``e2e`` on 172.28.20.0/24 with its inventory in
``inventory/e2e`` — never ``make demo``'s ``local``, so a running demo survives
``make test``. The fixture puts these settings into the environment for the session,
so the ``make lab``/``make lab-down`` the tests run reach the same lab.

Lifecycle: at session start a lab of that name left over from an earlier run is
removed first, so the deploy always meets freshly installed machines with no Docker
engine; ``TASKFLEET_E2E_REUSE_LAB=1`` keeps it instead (fast iteration). At session
end the lab is removed, whether the tests passed or failed; ``--keep-lab`` leaves it
running for inspection (then ``make lab-down`` with the same settings removes it).
Files run in name order: ``test_10_lab`` … ``test_99_lab_down`` (which checks what
``make lab-down`` removes).
"""

from __future__ import annotations

import os
import shlex
import subprocess
from collections.abc import Iterator, Mapping, Sequence
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


#: The suite's own lab when the environment names none (see the module docstring).
E2E_LAB = "e2e"
E2E_SUBNET = "172.28.20.0/24"
_KEPT_LAB = pytest.StashKey[str]()


def e2e_lab_settings(environ: Mapping[str, str]) -> dict[str, str]:
    """The lab variables the e2e session sets: none when ``TASKFLEET_LAB`` names a lab,
    else the suite's own lab (a subnet or inventory given in the environment still wins)."""
    if environ.get("TASKFLEET_LAB"):
        return {}
    return {
        "TASKFLEET_LAB": E2E_LAB,
        "TASKFLEET_LAB_SUBNET": environ.get("TASKFLEET_LAB_SUBNET") or E2E_SUBNET,
        "TASKFLEET_LAB_INVENTORY": (
            environ.get("TASKFLEET_LAB_INVENTORY") or str(REPO / "inventory" / E2E_LAB)
        ),
    }


@pytest.fixture(scope="session")
def lab(request: pytest.FixtureRequest) -> Iterator[Lab]:
    """The session's lab, fresh (unless TASKFLEET_E2E_REUSE_LAB=1) and removed at the end
    (unless --keep-lab). Fails the session's e2e tests with the lab's one-line error."""
    keep = bool(request.config.getoption("--keep-lab"))
    with pytest.MonkeyPatch.context() as env:
        for name, value in e2e_lab_settings(os.environ).items():
            env.setenv(name, value)
        try:
            cfg = labmod.LabConfig.from_env()
        except labmod.LabError as exc:
            pytest.fail(f"the lab settings are wrong: {exc}", pytrace=False)
        try:
            try:
                if os.environ.get("TASKFLEET_E2E_REUSE_LAB") != "1":
                    labmod.down(cfg, log=_log)  # the apt cache volume stays: installs stay fast
                info = labmod.up(cfg, log=_log)
            except labmod.LabError as exc:
                pytest.fail(f"the lab did not come up: {exc}", pytrace=False)
            yield Lab(cfg, info)
        finally:
            if keep:
                request.config.stash[_KEPT_LAB] = (
                    f"--keep-lab: lab {cfg.name} is still running; remove it with "
                    f"TASKFLEET_LAB={cfg.name} TASKFLEET_LAB_SUBNET={cfg.subnet} "
                    f"TASKFLEET_LAB_INVENTORY={cfg.inventory_dir} make lab-down"
                )
            else:
                labmod.down(cfg, log=_log)


def pytest_terminal_summary(terminalreporter: pytest.TerminalReporter) -> None:
    # A fixture's teardown output is captured; the way back to a kept lab must be seen.
    kept = terminalreporter.config.stash.get(_KEPT_LAB, None)
    if kept:
        terminalreporter.write_line(kept)

"""Read the Ansible inventory that the deploy uses, for the Fabric operations.

The inventory is read with ``ansible-inventory -i DIR --list`` so that
``group_vars``, ``host_vars``, inventory plugins and vault are honoured exactly
as ``ansible-playbook`` sees them; this module never parses YAML itself.

``load_inventory(path)`` runs the tool and returns an ``Inventory``;
``parse_inventory(data, source)`` is the pure part (JSON in, dataclasses out)
and is what the unit tests pin. Every problem is collected and raised at once
as an ``InventoryError`` whose lines read ``path: problem``.
"""

from __future__ import annotations

import getpass
import json
import os
import shlex
import shutil
import subprocess
import sys
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from taskfleet import defaults
from taskfleet.ops.engine import REPO
from taskfleet.ops.errors import InventoryError, OpsError

#: The inventory groups a taskfleet cluster is described by (the deploy's and the lab's).
MASTER_GROUP = "taskfleet_master"
WORKERS_GROUP = "taskfleet_workers"
DEFAULT_MASTER_PORT = defaults.MASTER_PORT
#: The lab `make` works on when neither LAB nor TASKFLEET_LAB names one.
DEFAULT_LAB = "local"


def lab_inventory(env: Mapping[str, str] | None = None) -> Path:
    """The inventory folder of the lab the environment names: TASKFLEET_LAB_INVENTORY,
    else inventory/<TASKFLEET_LAB, default local> (the Makefile's LAB_INVENTORY too)."""
    env = os.environ if env is None else env
    lab = env.get("TASKFLEET_LAB") or DEFAULT_LAB
    return Path(env.get("TASKFLEET_LAB_INVENTORY") or REPO / "inventory" / lab).resolve()


def make_setting(inventory: str | Path, env: Mapping[str, str] | None = None) -> str:
    """The make setting that selects ``inventory``: '' for make's default (the lab's),
    `` INVENTORY=<folder>`` for a folder under inventory/, else `` INVENTORY=<path>``."""
    path = Path(inventory).resolve()
    if path == lab_inventory(env):
        return ""
    if path.parent == REPO / "inventory":
        return f" INVENTORY={path.name}"
    return f" INVENTORY={inventory}"


@dataclass(frozen=True)
class Host:
    """One machine of the inventory, with what SSH needs to reach it."""

    name: str
    address: str
    user: str
    port: int = 22
    key_file: Path | None = None
    #: From ``-o UserKnownHostsFile=…`` in ansible_ssh_common_args/extra_args;
    #: None means the user's ~/.ssh/known_hosts, as ssh itself would use.
    known_hosts: Path | None = None
    vars: Mapping[str, Any] = field(default_factory=dict, compare=False, repr=False)

    @property
    def sudo(self) -> bool:
        """Whether docker and file commands need ``sudo -n`` (deploy user is not root)."""
        return self.user != "root"


@dataclass(frozen=True)
class Inventory:
    """The taskfleet view of an inventory: one master, one or more workers."""

    source: str
    master: Host
    workers: tuple[Host, ...]

    @property
    def all(self) -> tuple[Host, ...]:
        """Every taskfleet host once (master first), even if it is also a worker."""
        seen: dict[str, Host] = {self.master.name: self.master}
        for host in self.workers:
            seen.setdefault(host.name, host)
        return tuple(seen.values())

    def host(self, name: str) -> Host:
        """Return the taskfleet host called ``name`` or raise OpsError naming the valid ones."""
        for host in self.all:
            if host.name == name:
                return host
        valid = ", ".join(h.name for h in self.all)
        raise OpsError(f"unknown host '{name}'", f"valid hosts: {valid}")

    def worker(self, name: str) -> Host:
        """Return the worker host ``name`` or raise OpsError naming the worker hosts."""
        for host in self.workers:
            if host.name == name:
                return host
        valid = ", ".join(h.name for h in self.workers)
        raise OpsError(f"'{name}' is not a worker host", f"worker hosts: {valid}")

    @property
    def master_port(self) -> int:
        return int(self.master.vars.get("taskfleet_master_port", DEFAULT_MASTER_PORT))

    @property
    def master_bind(self) -> str:
        """The address the master listens on (taskfleet_bind_ip, else the host address)."""
        bind = self.master.vars.get("taskfleet_bind_ip")
        if isinstance(bind, str) and bind and "{{" not in bind:
            return bind
        return self.master.address


def _group_hosts(data: Mapping[str, Any], group: str) -> list[str]:
    """Hosts of ``group`` including its child groups, in inventory order."""
    out: list[str] = []
    entry = data.get(group)
    if not isinstance(entry, Mapping):
        return out
    for name in entry.get("hosts", []) or []:
        if name not in out:
            out.append(name)
    for child in entry.get("children", []) or []:
        for name in _group_hosts(data, child):
            if name not in out:
                out.append(name)
    return out


def known_hosts_from_args(args: str) -> str | None:
    """The UserKnownHostsFile named in an ssh argument string, if any.

    Accepts ``-o UserKnownHostsFile=P``, ``-oUserKnownHostsFile=P`` and
    ``-o "UserKnownHostsFile P"``; the first file of a space-separated list
    wins, as in ssh (it is also the one ssh writes to).
    """
    words = shlex.split(args)
    options: list[str] = []
    for i, word in enumerate(words):
        if word == "-o" and i + 1 < len(words):
            options.append(words[i + 1])
        elif word.startswith("-o") and len(word) > 2:
            options.append(word[2:])
    for option in options:
        key, sep, value = option.replace("=", " ", 1).partition(" ")
        if sep and key.strip().lower() == "userknownhostsfile":
            first = value.strip().split()
            if first:
                return first[0]
    return None


def _path(value: str) -> Path:
    # Relative paths are relative to the working directory, as for ssh/ansible.
    return Path(os.path.expanduser(value))


def _parse_host(name: str, hv: Mapping[str, Any], problems: list[str]) -> Host | None:
    where = f"hosts/{name}"
    bad = False
    for key in (
        "ansible_host",
        "ansible_user",
        "ansible_port",
        "ansible_ssh_private_key_file",
        "ansible_ssh_common_args",
        "ansible_ssh_extra_args",
    ):
        value = hv.get(key)
        if isinstance(value, str) and "{{" in value:
            problems.append(
                f"{where}/{key}: is a Jinja template ({value!r}); "
                "the Fabric tasks read literal values — set it literally"
            )
            bad = True
    if bad:
        return None

    address = str(hv.get("ansible_host") or name)
    user = str(hv.get("ansible_user") or getpass.getuser())

    raw_port = hv.get("ansible_port", 22)
    try:
        port = int(raw_port)
        if not 0 < port < 65536:
            raise ValueError
    except (TypeError, ValueError):
        problems.append(f"{where}/ansible_port: should be an integer 1-65535, got {raw_port!r}")
        return None

    key_file = None
    raw_key = hv.get("ansible_ssh_private_key_file") or hv.get("ansible_private_key_file")
    if raw_key:
        key_file = _path(str(raw_key))
        if not key_file.is_file():
            problems.append(f"{where}/ansible_ssh_private_key_file: no such file: {key_file}")
            return None

    known_hosts = None
    for key in ("ansible_ssh_common_args", "ansible_ssh_extra_args"):
        raw = hv.get(key)
        if raw:
            try:
                found = known_hosts_from_args(str(raw))
            except ValueError as exc:
                problems.append(f"{where}/{key}: cannot be split like a shell line ({exc})")
                return None
            if found:
                known_hosts = _path(found)
                break
    if known_hosts is not None and not known_hosts.is_file():
        problems.append(
            f"{where}/ansible_ssh_common_args: UserKnownHostsFile {known_hosts} "
            "does not exist — create it (ssh-keyscan, then check the fingerprints)"
        )
        return None

    return Host(
        name=name,
        address=address,
        user=user,
        port=port,
        key_file=key_file,
        known_hosts=known_hosts,
        vars=dict(hv),
    )


def parse_inventory(data: Mapping[str, Any], source: str) -> Inventory:
    """Turn ``ansible-inventory --list`` JSON into an Inventory.

    Raises InventoryError listing every problem (``path: problem``): the
    master group must hold exactly one host, the workers group at least one,
    and every host's SSH settings must be literal and point to existing files.
    """
    problems: list[str] = []
    hostvars: Mapping[str, Any] = data.get("_meta", {}).get("hostvars", {}) or {}

    masters = _group_hosts(data, MASTER_GROUP)
    workers = _group_hosts(data, WORKERS_GROUP)
    if len(masters) != 1:
        listed = f" ({', '.join(masters)})" if masters else ""
        problems.append(f"{MASTER_GROUP}: needs exactly one host, found {len(masters)}{listed}")
    if not workers:
        problems.append(f"{WORKERS_GROUP}: needs at least one host, found 0")

    parsed: dict[str, Host] = {}
    for name in [*masters, *workers]:
        if name in parsed:
            continue
        host = _parse_host(name, hostvars.get(name, {}) or {}, problems)
        if host is not None:
            parsed[name] = host

    if problems:
        raise InventoryError(source, problems)
    return Inventory(
        source=source, master=parsed[masters[0]], workers=tuple(parsed[n] for n in workers)
    )


def ansible_inventory_binary() -> str:
    """ansible-inventory next to this interpreter (the venv), else from PATH."""
    beside = Path(sys.executable).parent / "ansible-inventory"
    if beside.is_file():
        return str(beside)
    found = shutil.which("ansible-inventory")
    if not found:
        raise OpsError(
            "ansible-inventory not found",
            "install the ops extra (make venv, or pip install 'taskfleet[ops]')",
        )
    return found


def _first_reason(stderr: str) -> str:
    """The most useful line of ansible-inventory's complaint: the first plugin's
    reason plus the file:line it points at."""
    lines = [ln.strip() for ln in stderr.splitlines() if ln.strip()]
    reason = next(
        (ln.split(": ", 2)[-1] for ln in lines if ln.startswith("[WARNING]: Failed to parse")), None
    )
    origin = next(
        (
            ln.removeprefix("Origin: ")
            for ln in lines
            if ln.startswith("Origin: ") and not ln.startswith("Origin: <")
        ),
        None,
    )
    if reason is None:
        errors = [ln for ln in lines if ln.startswith("[ERROR]")] or lines
        return errors[-1].removeprefix("[ERROR]: ") if errors else "no output"
    return f"{reason} (at {origin})" if origin else reason


def load_inventory(path: str | Path, timeout: float = 60) -> Inventory:
    """Read the inventory directory (or file) at ``path`` through ansible-inventory.

    Raises OpsError when the path is missing or the tool fails (its last error
    line is quoted), InventoryError when the content is not a taskfleet cluster.
    """
    source = str(path)
    if not Path(path).exists():
        raise OpsError(
            f"no inventory at {source}",
            "use INVENTORY=local (make lab) or copy inventory/lab and fill in your hosts",
        )
    argv = [ansible_inventory_binary(), "-i", source, "--list"]
    # By default ansible-inventory only warns about a source it cannot parse and
    # lists an empty inventory; make that an error so it is reported as such.
    env = {**os.environ, "ANSIBLE_INVENTORY_UNPARSED_FAILED": "true"}
    try:
        proc = subprocess.run(
            argv, capture_output=True, text=True, timeout=timeout, check=False, env=env
        )
    except subprocess.TimeoutExpired as exc:
        raise OpsError(
            f"ansible-inventory -i {source} took more than {timeout:.0f}s",
            "check the inventory plugins and vault settings",
        ) from exc
    if proc.returncode != 0:
        raise OpsError(
            f"ansible-inventory cannot read {source}: {_first_reason(proc.stderr)}",
            "fix the inventory (or the vault password) and retry",
        )
    try:
        data = json.loads(proc.stdout)
    except json.JSONDecodeError as exc:
        raise OpsError(
            f"ansible-inventory printed no JSON for {source} ({exc})", "run it by hand to see why"
        ) from exc
    return parse_inventory(data, source)

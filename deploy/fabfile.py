"""Fabric day-two operations on a deployed taskfleet cluster.

Reads the same inventory as Ansible (``ansible-inventory --list``), connects
with verified host keys only, and works on the hosts in parallel. The logic
lives in ``taskfleet.ops``; this file only declares the tasks.

    fab -r deploy status --inventory inventory/local [--json]
    fab -r deploy scale 4 [--host worker1]

Every task takes ``--inventory DIR`` (default: $TASKFLEET_INVENTORY, else
inventory/local) and exits non-zero if any host failed.
"""

from __future__ import annotations

import os
from collections.abc import Callable
from pathlib import Path
from typing import Any

from fabric import task
from invoke.context import Context
from invoke.exceptions import Exit
from invoke.tasks import Task

from taskfleet.ops import dashboard as dashboard_op
from taskfleet.ops import operations
from taskfleet.ops.errors import OpsError, run_cli
from taskfleet.ops.inventory import Inventory, load_inventory

INVENTORY_HELP = "inventory directory (default: $TASKFLEET_INVENTORY or inventory/local)"


def op(**help: str) -> Callable[[Callable[..., None]], Task[Any]]:
    """A Fabric task with per-option help; no automatic short flags, so that ``-h``
    stays ``--help`` and every option reads the same in the Makefile and the docs."""
    decorate: Callable[[Callable[..., None]], Task[Any]] = task(auto_shortflags=False, help=help)
    return decorate


def _inventory(path: str) -> Inventory:
    # The same Ansible settings as `make` (vault password file, inventory plugins)
    # when fab is run by hand.
    os.environ.setdefault("ANSIBLE_CONFIG", str(Path(__file__).with_name("ansible.cfg")))
    return load_inventory(path or os.environ.get("TASKFLEET_INVENTORY", "inventory/local"))


def _run(action: Callable[[], int]) -> None:
    """Turn an operation's status into the process exit code, errors into one line."""
    code = run_cli(action)
    if code:
        raise Exit(code=code)


def _int(name: str, value: str | int) -> int:
    try:
        return int(value)
    except (TypeError, ValueError):
        raise OpsError(f"{name} must be an integer, got {value!r}") from None


@op(inventory=INVENTORY_HELP, json="print one JSON document instead of tables")
def status(c: Context, inventory: str = "", json: bool = False) -> None:
    """Containers (state, health, restarts) per host, the master's view, and the verdict:
    exit 0 healthy, 1 degraded (each problem one line), 2 no view from the master."""
    _run(lambda: operations.status(_inventory(inventory), as_json=json))


@op(
    inventory=INVENTORY_HELP,
    tunnel="always go through an SSH tunnel to the master host",
)
def dashboard(c: Context, inventory: str = "", tunnel: bool = False) -> None:
    """Print the dashboard's URL, or hold an SSH tunnel to it open until Ctrl-C."""
    _run(lambda: dashboard_op.dashboard(_inventory(inventory), tunnel))


@op(
    inventory=INVENTORY_HELP,
    host="only this inventory host",
    since="only lines since T (e.g. 10m, 2024-05-01T10:00:00)",
    follow="keep streaming new lines until Ctrl-C",
    tail="only the last N lines per container",
)
def logs(
    c: Context,
    inventory: str = "",
    host: str = "",
    since: str = "",
    follow: bool = False,
    tail: str = "",
) -> None:
    """Master and worker logs, each line prefixed <host>/<container>."""

    def action() -> int:
        lines = _int("--tail", tail) if tail else None
        return operations.logs(_inventory(inventory), host or None, since or None, follow, lines)

    _run(action)


@op(
    n="worker containers per worker host (>= 1)",
    inventory=INVENTORY_HELP,
    host="only this worker host",
)
def scale(c: Context, n: str, inventory: str = "", host: str = "") -> None:
    """Set the number of workers per worker host; removed workers drain on SIGTERM first."""

    def action() -> int:
        count = _int("N", n)
        return operations.scale(_inventory(inventory), count, host or None)

    _run(action)


@op(inventory=INVENTORY_HELP)
def restart(c: Context, inventory: str = "") -> None:
    """Rolling restart: one worker host at a time, until healthy and seen; the master last."""
    _run(lambda: operations.restart(_inventory(inventory)))


@op(
    inventory=INVENTORY_HELP,
    count="how many numbers to square (default 10000)",
    json="print the smoke report as JSON",
)
def smoke(c: Context, inventory: str = "", count: str = "10000", json: bool = False) -> None:
    """The squares smoke test on the running cluster: every result right, every host used."""

    def action() -> int:
        number = _int("--count", count)
        return operations.smoke(_inventory(inventory), number, as_json=json)

    _run(action)


@op(
    inventory=INVENTORY_HELP,
    purge="also remove the journal volume and /etc/taskfleet/authkey on the hosts",
)
def down(c: Context, inventory: str = "", purge: bool = False) -> None:
    """Remove every taskfleet container on every host (workers drain first)."""
    _run(lambda: operations.down(_inventory(inventory), purge))

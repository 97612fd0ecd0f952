"""The taskfleet containers on a host, as read from ``docker inspect``: a pure model.

``parse_containers`` turns the inspect JSON that ``HostCommands.inspect_managed``
prints into :class:`Container` objects (master first, then workers by index);
``master_address`` reads where the master serves from its own arguments. No I/O:
the operations fetch the JSON over SSH and the unit tests feed it directly.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime

from taskfleet.address import format_hostport
from taskfleet.ops.commands import LABEL_INVENTORY_HOST, LABEL_ROLE, worker_index
from taskfleet.ops.inventory import Inventory


@dataclass
class Container:
    """One taskfleet container as ``status`` shows it."""

    name: str
    role: str
    state: str
    health: str
    image: str
    tag: str
    started_at: str
    uptime_s: float | None
    args: list[str] = field(default_factory=list, repr=False)
    inventory_host: str = ""
    restart_count: int = 0  # restarts by Docker's restart policy since the container was made
    exit_code: int | None = None  # of the last run, when the container is not running

    @property
    def running(self) -> bool:
        return self.state == "running"

    @property
    def ready(self) -> bool:
        """Running, and healthy when the image defines a healthcheck."""
        return self.running and self.health in ("healthy", "-")


def _uptime(started_at: str, running: bool, now: datetime) -> float | None:
    if not running or not started_at or started_at.startswith("0001-"):
        return None
    try:
        started = datetime.fromisoformat(started_at)
    except ValueError:
        return None
    return max(0.0, (now - started).total_seconds())


def _int_or_none(value: object) -> int | None:
    return value if isinstance(value, int) else None


def parse_containers(inspect_json: str, now: datetime | None = None) -> list[Container]:
    """Containers from ``docker inspect`` output (empty output → none), sorted master
    first, then workers by index."""
    text = inspect_json.strip()
    if not text:
        return []
    now = now or datetime.now(UTC)
    found = []
    for item in json.loads(text):
        cfg = item.get("Config") or {}
        labels = cfg.get("Labels") or {}
        state = item.get("State") or {}
        image = str(cfg.get("Image") or "")
        running = state.get("Status") == "running"
        found.append(
            Container(
                name=str(item.get("Name", "")).lstrip("/"),
                role=labels.get(LABEL_ROLE, "?"),
                state=str(state.get("Status", "?")),
                health=str((state.get("Health") or {}).get("Status", "-")),
                image=image,
                tag=image.rsplit(":", 1)[1] if ":" in image.rsplit("/", 1)[-1] else "latest",
                started_at=str(state.get("StartedAt", "")),
                uptime_s=_uptime(str(state.get("StartedAt", "")), running, now),
                args=list(cfg.get("Cmd") or []),
                inventory_host=labels.get(LABEL_INVENTORY_HOST, ""),
                restart_count=int(item.get("RestartCount") or 0),
                exit_code=None if running else _int_or_none(state.get("ExitCode")),
            )
        )

    def order(c: Container) -> tuple[int, int, str]:
        index = worker_index(c.name)
        return (0 if c.role == "master" else 1, index if index is not None else 10**6, c.name)

    return sorted(found, key=order)


def workers_of(containers: Sequence[Container]) -> list[Container]:
    """The numbered worker containers (``taskfleet-worker-<n>``) among ``containers``."""
    return [c for c in containers if c.role == "worker" and worker_index(c.name) is not None]


def _arg(args: Sequence[str], flag: str) -> str | None:
    for i, arg in enumerate(args):
        if arg == flag and i + 1 < len(args):
            return args[i + 1]
        if arg.startswith(flag + "="):
            return arg.split("=", 1)[1]
    return None


def master_address(inv: Inventory, containers: Sequence[Container]) -> str:
    """HOST:PORT the master serves on: read from the running master's own arguments
    (the deploy's truth), else from the inventory (taskfleet_bind_ip, port)."""
    for c in containers:
        if c.role == "master":
            bind = _arg(c.args, "--bind")
            port = _arg(c.args, "--port")
            if bind in (None, "", "0.0.0.0", "::"):  # noqa: S104 — reading, not binding
                bind = inv.master_bind
            return format_hostport(bind, int(port or inv.master_port))
    return format_hostport(inv.master_bind, inv.master_port)


TLS_FLAGS = ("--tls-ca", "--tls-cert", "--tls-key")


def master_tls(containers: Sequence[Container]) -> list[str]:
    """The master's own ``--tls-*`` arguments (container paths), for the commands run in
    its container; [] when it runs without TLS."""
    for c in containers:
        if c.role == "master":
            args = []
            for flag in TLS_FLAGS:
                value = _arg(c.args, flag)
                if value is None:
                    return []
                args += [flag, value]
            return args
    return []

"""The summary ``make demo`` ends with, read from the smoke role's report.

The deploy's smoke role leaves its result in ``.build/smoke-<inventory>.json``
(``taskfleet_smoke_report_file``); :func:`summary` turns it into a few lines
and the ``next:`` commands for the same lab and inventory.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from taskfleet.ops.engine import REPO
from taskfleet.ops.errors import LabError
from taskfleet.ops.inventory import make_setting
from taskfleet.ops.lab.config import DEFAULT_NAME, LabConfig


def report_path(inventory_dir: Path) -> Path:
    """Where the smoke role writes its report for ``inventory_dir`` (the role's default)."""
    return REPO / ".build" / f"smoke-{inventory_dir.name}.json"


def inventory_setting(cfg: LabConfig) -> str:
    """The make settings that select the lab's inventory: `` LAB=ux``, `` INVENTORY=…`` or ''.

    Written out in full (not left to an exported TASKFLEET_LAB), so the line works
    in any shell.
    """
    if cfg.inventory_dir == REPO / "inventory" / cfg.name:
        return "" if cfg.name == DEFAULT_NAME else f" LAB={cfg.name}"
    return make_setting(cfg.inventory_dir, env={})


def next_steps(cfg: LabConfig) -> str:
    """``make status | make smoke | make teardown | make lab-down``, for this lab."""
    inventory = inventory_setting(cfg)
    steps = [f"make {target}{inventory}" for target in ("status", "smoke", "teardown")]
    return " | ".join([*steps, cfg.make("lab-down")])


def summary(report: Mapping[str, Any], cfg: LabConfig) -> str:
    """The demo's closing lines for a smoke ``report`` on ``cfg``'s lab."""
    hosts = report["hosts"]
    per_host = ", ".join(f"{host}={items}" for host, items in sorted(hosts.items()))
    return "\n".join(
        [
            "",
            "==> taskfleet demo: OK",
            f"    master        {report['master']}",
            f"    worker hosts  {len(hosts)} ({per_host} items)",
            f"    workers       {len(report['workers'])}",
            f"    verified      {report['verified']} of {report['count']} squares",
            f"    speed         {report['items_per_s']:.0f} items/s",
            f"    next: {next_steps(cfg)}",
        ]
    )


def read_report(cfg: LabConfig) -> dict[str, Any]:
    """The smoke report of ``cfg``'s inventory; LabError when the deploy left none."""
    path = report_path(cfg.inventory_dir)
    try:
        report = json.loads(path.read_text())
    except FileNotFoundError:
        raise LabError(
            f"no smoke report at {path.relative_to(REPO)}",
            f"run make deploy{inventory_setting(cfg)} — its smoke step writes it",
        ) from None
    except json.JSONDecodeError as exc:
        raise LabError(
            f"the smoke report {path.relative_to(REPO)} is not JSON ({exc})",
            f"run make deploy{inventory_setting(cfg)} again",
        ) from None
    if not isinstance(report, dict):
        raise LabError(
            f"the smoke report {path.relative_to(REPO)} is not a JSON object",
            f"run make deploy{inventory_setting(cfg)} again",
        )
    return report

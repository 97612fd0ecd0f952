"""``python -m taskfleet.ops.lab up | down [--purge] | status [--json] | summary``."""

from __future__ import annotations

import argparse
import json
import sys

from taskfleet.ops import engine
from taskfleet.ops.errors import LabError, run_cli
from taskfleet.ops.lab import demo
from taskfleet.ops.lab.config import LabConfig
from taskfleet.ops.lab.lifecycle import display, down, status, up


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="python -m taskfleet.ops.lab",
        description="Simulated machines for taskfleet (env: TASKFLEET_LAB, TASKFLEET_LAB_SUBNET, "
        "TASKFLEET_LAB_INVENTORY, LAB_WORKERS, TASKFLEET_LAB_APT_CACHE).",
    )
    sub = parser.add_subparsers(dest="command", required=True)
    sub.add_parser("up", help="create or complete the lab, write the inventory")
    p_down = sub.add_parser("down", help="remove the lab's containers, volumes and network")
    p_down.add_argument("--purge", action="store_true", help="also remove the apt cache volume")
    p_status = sub.add_parser("status", help="show the lab's hosts and their state")
    p_status.add_argument("--json", action="store_true", help="print one JSON list")
    sub.add_parser("summary", help="the demo's summary of the last smoke run on the lab")
    return parser


def _print_status(cfg: LabConfig, rows: list[dict[str, str]]) -> None:
    print(
        f"lab {cfg.name}: network {cfg.network} {cfg.subnet}, inventory {display(cfg.hosts_file)}"
    )
    cols = [
        ("host", "HOST"),
        ("address", "ADDRESS"),
        ("group", "GROUP"),
        ("container", "CONTAINER"),
        ("state", "STATE"),
        ("service", "SSH/APT"),
    ]
    widths = {k: max(len(t), *(len(r[k]) for r in rows)) for k, t in cols}
    print("  ".join(t.ljust(widths[k]) for k, t in cols).rstrip())
    for row in rows:
        print("  ".join(row[k].ljust(widths[k]) for k, _ in cols).rstrip())


def main(argv: list[str] | None = None) -> int:
    args = _parser().parse_args(argv)

    def run() -> None:
        with engine.docker_errors(LabError):
            # Only `up` creates a network, so only `up` needs a free subnet.
            cfg = LabConfig.from_env(need_free_subnet=args.command == "up")
            if args.command == "up":
                up(cfg)
            elif args.command == "down":
                down(cfg, purge=args.purge)
            elif args.command == "summary":
                print(demo.summary(demo.read_report(cfg), cfg))
            else:
                rows = status(cfg)
                if args.json:
                    print(json.dumps(rows))
                else:
                    _print_status(cfg, rows)

    return run_cli(run)


if __name__ == "__main__":
    sys.exit(main())

"""Deploy benchmark: how long the Ansible deploy takes, against a floor measured
in the same run on the same lab.

Run with ``make bench-deploy``. It uses the simulated lab (``make lab``):

  floor     `ansible all -m ping` — one SSH round trip to every host;
  fresh     `make deploy` onto freshly created lab hosts (no Docker engine
            yet: the deploy installs it, ships the images, starts master and
            workers, runs the smoke job) — what `make demo` does once the lab
            is up;
  again     the idempotent second `make deploy` (changed=0, smoke included).

Images must exist (`make images`); the lab's hosts are recreated first, so
anything deployed on the lab before is gone afterwards (it is deployed again).
"""

from __future__ import annotations

import argparse
import json
import os
import re
import subprocess
import sys
import time
from pathlib import Path

from taskfleet.ops.inventory import lab_inventory

REPO = Path(__file__).resolve().parents[1]
BIN = Path(sys.executable).parent
RECAP = re.compile(r"^(\S+)\s+: ok=\d+\s+changed=(\d+)", re.M)


def run(argv: list[str], what: str) -> tuple[float, str]:
    """Run argv from the repository root; return (seconds, output); exit on failure."""
    print(f"==> {what}", file=sys.stderr, flush=True)
    started = time.monotonic()
    proc = subprocess.run(argv, cwd=REPO, capture_output=True, text=True, check=False)
    took = time.monotonic() - started
    if proc.returncode != 0:
        tail = (proc.stdout + proc.stderr)[-3000:]
        sys.exit(f"bench: error: {what} failed (exit {proc.returncode}):\n{tail}")
    return took, proc.stdout


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument(
        "--inventory",
        default=str(lab_inventory()),
        help="the lab's inventory (default: the one make lab writes, inventory/<TASKFLEET_LAB>)",
    )
    parser.add_argument("--json", action="store_true", help="also print one JSON line")
    args = parser.parse_args()
    if not (REPO / ".build" / "images.json").exists():
        sys.exit("bench: error: .build/images.json is missing — run make images first")
    env_make = ["make", "--no-print-directory"]

    run([*env_make, "lab-down"], "remove the lab (fresh hosts for the first deploy)")
    lab_s, _ = run([*env_make, "lab"], "start the lab")
    ping_s, _ = run(
        [str(BIN / "ansible"), "all", "-i", args.inventory, "-m", "ansible.builtin.ping"],
        "ansible all -m ping (the floor)",
    )
    deploy = [*env_make, "deploy", f"INVENTORY={args.inventory}"]
    fresh_s, _ = run(deploy, "make deploy on fresh hosts")
    again_s, out = run(deploy, "make deploy again")
    changed = {host: int(n) for host, n in RECAP.findall(out)}
    if any(changed.values()):
        sys.exit(f"bench: error: the second deploy changed something: {changed}")

    hosts = len(changed)
    cores = os.cpu_count()
    print(f"\nDeploy benchmark on the simulated lab ({hosts} hosts deployed, {cores} cores)\n")
    print("| run | wall time | vs. ansible ping |")
    print("| --- | ---: | ---: |")
    print(f"| `make lab` (hosts created, images cached) | {lab_s:.1f} s | {lab_s / ping_s:.1f}x |")
    print(f"| `ansible all -m ping` (floor) | {ping_s:.1f} s | 1.0x |")
    print(
        f"| `make deploy`, fresh hosts (= `make demo` on an up lab) | {fresh_s:.1f} s "
        f"| {fresh_s / ping_s:.0f}x |"
    )
    print(
        f"| `make deploy` again (changed=0 on every host) | {again_s:.1f} s "
        f"| {again_s / ping_s:.0f}x |"
    )
    print(f"\nfresh / idempotent: {fresh_s / again_s:.1f}x")
    if args.json:
        print(
            json.dumps(
                {
                    "hosts": hosts,
                    "lab_s": round(lab_s, 1),
                    "ping_s": round(ping_s, 2),
                    "fresh_deploy_s": round(fresh_s, 1),
                    "again_deploy_s": round(again_s, 1),
                }
            )
        )
    return 0


if __name__ == "__main__":
    sys.exit(main())

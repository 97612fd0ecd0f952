"""`make … LAB=<name>`: one setting selects the lab, its inventory and what the lab tool sees."""

from __future__ import annotations

import os
import re
import shutil
import subprocess

import pytest

from taskfleet.ops.engine import REPO

pytestmark = pytest.mark.skipif(shutil.which("make") is None, reason="make not installed")

SHOW = (
    'show-lab: ; @echo "LAB=$(LAB) INVENTORY_DIR=$(INVENTORY_DIR) '
    'env=$$TASKFLEET_LAB,$$TASKFLEET_LAB_SUBNET,$$TASKFLEET_LAB_INVENTORY"'
)
OPS_ENV = {
    "TASKFLEET_LAB": "ops",
    "TASKFLEET_LAB_SUBNET": "172.28.11.0/24",
    "TASKFLEET_LAB_INVENTORY": "inventory/ops",
}


def make(*args: str, env: dict[str, str] | None = None) -> str:
    clean = {k: v for k, v in os.environ.items() if not k.startswith("TASKFLEET_LAB")}
    proc = subprocess.run(
        ["make", "-s", "--no-print-directory", *args],
        cwd=REPO,
        env={**clean, **(env or {})},
        capture_output=True,
        text=True,
        timeout=60,
        check=True,
    )
    return proc.stdout.strip()


def show(*args: str, env: dict[str, str] | None = None) -> str:
    return make("--eval", SHOW, "show-lab", *args, env=env)


def test_without_settings_make_works_on_the_default_lab() -> None:
    assert show() == "LAB=local INVENTORY_DIR=inventory/local env=local,,"


def test_lab_names_the_lab_and_its_inventory_for_every_target() -> None:
    assert show("LAB=ux") == "LAB=ux INVENTORY_DIR=inventory/ux env=ux,,"
    assert (
        make("-n", "status", "LAB=ux") == ".venv/bin/fab -r deploy status --inventory inventory/ux"
    )
    assert "ansible-playbook -i inventory/ux deploy/site.yml" in make("-n", "deploy", "LAB=ux")


def test_inventory_is_a_folder_under_inventory_or_a_path() -> None:
    assert show("LAB=ux", "INVENTORY=lab").startswith("LAB=ux INVENTORY_DIR=inventory/lab ")
    assert show("INVENTORY=/srv/inv").startswith("LAB=local INVENTORY_DIR=/srv/inv ")


def test_the_exported_lab_settings_still_work_and_override_what_is_derived() -> None:
    assert show(env=OPS_ENV) == (
        "LAB=ops INVENTORY_DIR=inventory/ops env=ops,172.28.11.0/24,inventory/ops"
    )
    assert show("LAB=ops", env=OPS_ENV) == show(env=OPS_ENV)


def test_a_lab_named_on_the_command_line_drops_another_labs_overrides() -> None:
    assert show("LAB=ux", env=OPS_ENV) == "LAB=ux INVENTORY_DIR=inventory/ux env=ux,,"
    # an override on the command line is for the lab named there
    assert show("LAB=ux", "TASKFLEET_LAB_SUBNET=172.28.12.0/24", env=OPS_ENV) == (
        "LAB=ux INVENTORY_DIR=inventory/ux env=ux,172.28.12.0/24,"
    )


def test_make_test_runs_e2e_on_its_own_lab_unless_a_lab_is_named() -> None:
    """The e2e fixture picks its own lab when TASKFLEET_LAB is unset: make must not set it
    from LAB's default, or `make test` would rebuild the demo's lab."""
    e2e_line = next(ln for ln in make("-n", "test").splitlines() if "tests/e2e" in ln)
    assert e2e_line.startswith(
        "env -u TASKFLEET_LAB -u TASKFLEET_LAB_SUBNET -u TASKFLEET_LAB_INVENTORY "
    )
    for args, env in ((["LAB=ux"], None), ([], OPS_ENV)):
        named = next(
            ln for ln in make("-n", "test", *args, env=env).splitlines() if "tests/e2e" in ln
        )
        assert named.startswith(".venv/bin/pytest tests/e2e"), named


def test_help_shows_every_setting_with_its_default() -> None:
    text = re.sub(r"\x1b\[[0-9;]*m", "", make("help"))
    for name, default in (("LAB", "local"), ("INVENTORY", "empty"), ("COUNT", "10000")):
        line = next(ln for ln in text.splitlines() if f" {name} " in ln and "default:" in ln)
        assert line.endswith(f"(default: {default})"), line

"""ansible-lint (production profile, offline) and yamllint pass on deploy/."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]
BIN = Path(sys.executable).parent


def test_ansible_lint_production_profile_passes() -> None:
    result = subprocess.run(
        [str(BIN / "ansible-lint"), "--offline", "--profile", "production", "--nocolor"],
        cwd=REPO / "deploy",
        capture_output=True,
        text=True,
        timeout=600,
        check=False,
    )
    assert result.returncode == 0, result.stdout[-4000:] + result.stderr[-4000:]
    assert "Profile 'production' was required, and it passed" in result.stderr + result.stdout


def test_yamllint_passes_on_deploy_and_inventories() -> None:
    result = subprocess.run(
        [
            str(BIN / "yamllint"),
            "--strict",
            "-c",
            "deploy/.yamllint",
            "deploy",
            "inventory/lab",
            "inventory/local/group_vars",
        ],
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=300,
        check=False,
    )
    assert result.returncode == 0, result.stdout[-4000:]

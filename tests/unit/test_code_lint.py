"""ruff and mypy (strict, src/ and the fabfile) pass: the style the project holds itself to."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]
BIN = Path(sys.executable).parent


def test_ruff_passes() -> None:
    result = subprocess.run(
        [str(BIN / "ruff"), "check", "--no-cache", "src", "tests", "bench", "deploy/fabfile.py"],
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=300,
        check=False,
    )
    assert result.returncode == 0, result.stdout[-4000:] + result.stderr[-2000:]


def test_mypy_strict_passes() -> None:
    result = subprocess.run(
        [str(BIN / "mypy")], cwd=REPO, capture_output=True, text=True, timeout=600, check=False
    )
    assert result.returncode == 0, result.stdout[-4000:] + result.stderr[-2000:]
    assert "Success: no issues found" in result.stdout

"""ruff (lint and format) and mypy (strict, src/ and the fabfile) pass: the style the project
holds itself to. Part of the lint tier (`make lint`)."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]
BIN = Path(sys.executable).parent
#: Every Python tree ruff looks at (mypy's files are in pyproject's [tool.mypy]).
PYTHON_PATHS = ["src", "tests", "bench", "examples", "deploy/fabfile.py"]


def run(tool: str, *args: str) -> subprocess.CompletedProcess[str]:
    """A linter of the venv, run from the repository root."""
    return subprocess.run(
        [str(BIN / tool), *args], cwd=REPO, capture_output=True, text=True, timeout=600
    )


def test_ruff_check_passes() -> None:
    result = run("ruff", "check", "--no-cache", *PYTHON_PATHS)
    assert result.returncode == 0, result.stdout[-4000:] + result.stderr[-2000:]


def test_ruff_format_leaves_every_file_unchanged() -> None:
    # On failure it lists the files; `ruff format --diff <file>` shows the change.
    result = run("ruff", "format", "--check", "--no-cache", *PYTHON_PATHS)
    assert result.returncode == 0, result.stdout[-4000:] + result.stderr[-2000:]


def test_mypy_strict_passes() -> None:
    result = run("mypy")
    assert result.returncode == 0, result.stdout[-4000:] + result.stderr[-2000:]
    assert "Success: no issues found" in result.stdout

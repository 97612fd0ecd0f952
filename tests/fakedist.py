"""An installed distribution on disk, as an installer leaves it, for tests of job packages.

Put its folder on ``sys.path`` (or ``PYTHONPATH`` of a process) and
``importlib.metadata`` finds it: its name and version, its ``taskfleet.jobs``
entry points and the top-level module it owns.
"""

from __future__ import annotations

from pathlib import Path


def fake_distribution(
    root: Path, name: str, version: str, module: str, source: str, jobs: dict[str, str]
) -> Path:
    """Write ``module`` (``source``) and ``<name>-<version>.dist-info`` with ``jobs``
    (entry point name → ``module:function``) under ``root``; return ``root``."""
    (root / module).mkdir(parents=True)
    (root / module / "__init__.py").write_text(source)
    info = root / f"{name.replace('-', '_')}-{version}.dist-info"
    info.mkdir()
    (info / "METADATA").write_text(f"Metadata-Version: 2.1\nName: {name}\nVersion: {version}\n")
    entries = "".join(f"{job} = {target}\n" for job, target in jobs.items())
    (info / "entry_points.txt").write_text(f"[taskfleet.jobs]\n{entries}")
    (info / "top_level.txt").write_text(f"{module}\n")
    return root

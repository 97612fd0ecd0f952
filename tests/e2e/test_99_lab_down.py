"""Last e2e file: `make lab-down` removes everything the lab made, and only that.

(The ``lab`` fixture removes the lab at session end anyway, also after failures; this file
checks the command a user runs.)
"""

from __future__ import annotations

import subprocess

import docker
import pytest

from taskfleet.ops import lab as labmod

from .conftest import REPO, Lab


def _labelled(client: docker.DockerClient, name: str) -> dict[str, list[str]]:
    selector = {"label": [f"{labmod.LABEL_LAB}={name}"]}
    return {
        "containers": sorted(c.name for c in client.containers.list(all=True, filters=selector)),
        "volumes": sorted(v.name for v in client.volumes.list(filters=selector)),
        "networks": sorted(n.name for n in client.networks.list(filters=selector)),
    }


def test_make_lab_down_removes_every_labelled_object_but_the_apt_cache(
    lab: Lab, request: pytest.FixtureRequest
) -> None:
    if request.config.getoption("--keep-lab"):
        pytest.skip("--keep-lab: the lab stays up, so `make lab-down` is not run")
    client = docker.from_env()
    before = _labelled(client, lab.name)
    assert len(before["containers"]) == len(lab.hosts) + 1  # + the apt cache
    assert before["networks"] == [lab.network]
    # Something of another lab's, labelled alike but for another name, must survive.
    bystander = client.volumes.create(
        f"taskfleet-{lab.name}-bystander",
        labels={labmod.LABEL_MANAGED: "true", labmod.LABEL_LAB: f"{lab.name}-bystander"},
    )
    try:
        proc = subprocess.run(
            ["make", "--no-print-directory", "lab-down"],
            capture_output=True,
            text=True,
            timeout=300,
            cwd=REPO,
        )
        assert proc.returncode == 0, proc.stdout + proc.stderr
        cache = lab.cfg.aptcache_volume
        # Exactly the apt cache volume is kept, on purpose (CI's next install is fast).
        assert _labelled(client, lab.name) == {
            "containers": [],
            "volumes": [cache],
            "networks": [],
        }
        assert client.volumes.get(cache).attrs["Labels"][labmod.LABEL_ROLE] == "aptcache-volume"
        assert f"volume {cache}: kept" in proc.stdout
        for name in before["containers"]:
            assert f"container {name}: removed" in proc.stdout
        assert not lab.cfg.hosts_file.exists()
        assert not lab.cfg.state_dir.exists()
        client.volumes.get(bystander.name)  # still there

        again = subprocess.run(
            ["make", "--no-print-directory", "lab-down"],
            capture_output=True,
            text=True,
            timeout=120,
            cwd=REPO,
        )
        assert again.returncode == 0, again.stderr
        assert "removed 0 containers, 0 volumes, 0 networks (nothing was running)" in again.stdout
    finally:
        bystander.remove(force=True)

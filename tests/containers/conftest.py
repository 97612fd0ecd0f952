"""Fixtures for the container tests: real images, a real Docker network, real containers.

One session builds (or reuses) both images through the same code path as
`make images`, creates a labelled user-defined network with its own subnet,
and starts one master and two workers on it. Every container, network and
volume carries ``io.taskfleet.managed=true`` and ``io.taskfleet.test=<run id>``
and is removed by those labels at teardown, whatever the tests did.
"""

from __future__ import annotations

import json
import os
import secrets
import shutil
import subprocess
import sys
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import docker
import docker.errors
import pytest
from docker.models.containers import Container

from taskfleet.ops import images as images_mod

SECRET = "/run/secrets/taskfleet_authkey"
PORT = 7451
# Our own subnet, clear of the default lab's 172.28.10.0/24, the e2e lab's 172.28.20.0/24
# and the named labs' 172.28.100-254.0/24 (TASKFLEET_CT_SUBNET picks another one).
SUBNET = os.environ.get("TASKFLEET_CT_SUBNET", "172.28.50.0/24")
# Short health intervals for the tests only; the images keep 30 s defaults.
HEALTH_FAST = {"interval": 1_000_000_000, "timeout": 5_000_000_000, "retries": 3}


def _taskfleet_cli() -> str:
    """The taskfleet console script of the venv running the tests."""
    candidate = Path(sys.executable).with_name("taskfleet")
    return str(candidate) if candidate.exists() else shutil.which("taskfleet") or "taskfleet"


def make_authkey(directory: Path, name: str) -> Path:
    """A key from `taskfleet keygen`, owned by the containers' uid 10001, mode 0400."""
    path = directory / name
    subprocess.run([_taskfleet_cli(), "keygen", str(path)], check=True, capture_output=True)
    os.chown(path, 10001, 10001)
    path.chmod(0o400)
    return path


def logs(container: Container) -> str:
    return container.logs(stdout=True, stderr=True).decode(errors="replace")


@dataclass
class Cluster:
    """One master and two workers on a network of their own."""

    client: docker.DockerClient
    images: images_mod.ImageSet
    run_id: str
    network: str
    key: Path
    master: Container
    workers: list[Container] = field(default_factory=list)

    @property
    def labels(self) -> dict[str, str]:
        return {"io.taskfleet.managed": "true", "io.taskfleet.test": self.run_id}

    @property
    def master_addr(self) -> str:
        # Docker's DNS on a user-defined network resolves container names.
        return f"{self.master.name}:{PORT}"

    def secret_mount(self, key: Path | None = None) -> dict[str, dict[str, str]]:
        return {str(key or self.key): {"bind": SECRET, "mode": "ro"}}

    def run_worker(self, name: str, key: Path | None = None) -> Container:
        """A worker from the image's default command; the master comes from TASKFLEET_MASTER."""
        return self.client.containers.run(
            self.images.worker,
            name=f"{self.run_id}-{name}",
            hostname=name,  # the worker reports its hostname as its host label
            detach=True,
            network=self.network,
            environment={"TASKFLEET_MASTER": self.master_addr},
            volumes=self.secret_mount(key),
            labels={**self.labels, "io.taskfleet.role": "worker"},
            healthcheck=HEALTH_FAST,
        )

    def run_client(
        self, args: list[str], extra_volumes: dict[str, dict[str, str]] | None = None
    ) -> Container:
        """A one-off taskfleet command (smoke, submit) in a container on the network."""
        return self.client.containers.run(
            self.images.master,
            command=[*args[:1], "--master", self.master_addr, *args[1:]],
            name=f"{self.run_id}-client-{secrets.token_hex(3)}",
            detach=True,
            network=self.network,
            volumes={**self.secret_mount(), **(extra_volumes or {})},
            labels={**self.labels, "io.taskfleet.role": "client"},
        )

    def status(self) -> dict[str, Any]:
        """`taskfleet status --json` run inside the master container."""
        rc, out = self.master.exec_run(
            ["taskfleet", "status", "--json", "--master", f"127.0.0.1:{PORT}"]
        )
        assert rc == 0, out.decode(errors="replace")
        return dict(json.loads(out.decode().strip().splitlines()[-1]))


@pytest.fixture(scope="session")
def docker_client() -> docker.DockerClient:
    try:
        return images_mod.connect()
    except images_mod.ImagesError as exc:
        pytest.fail(f"tests/containers need a Docker engine: {exc}")


@pytest.fixture(scope="session")
def built_images(docker_client: docker.DockerClient) -> images_mod.ImageSet:
    """Both images, built exactly as `make images` builds them (BASE_IMAGE honoured)."""
    try:
        return images_mod.build_images(os.environ.get("BASE_IMAGE") or None, client=docker_client)
    except images_mod.ImagesError as exc:
        pytest.fail(f"make images failed: {exc}")


def _remove_by_label(client: docker.DockerClient, label: str) -> None:
    selector = {"label": label}
    for container in client.containers.list(all=True, filters=selector):
        container.remove(force=True, v=True)
    for network in client.networks.list(filters=selector):
        network.remove()
    for volume in client.volumes.list(filters=selector):
        volume.remove(force=True)


@pytest.fixture(scope="session")
def cluster(
    docker_client: docker.DockerClient,
    built_images: images_mod.ImageSet,
    tmp_path_factory: pytest.TempPathFactory,
) -> Iterator[Cluster]:
    run_id = f"tfct-{secrets.token_hex(3)}"
    label = f"io.taskfleet.test={run_id}"
    labels = {"io.taskfleet.managed": "true", "io.taskfleet.test": run_id}
    keys = tmp_path_factory.mktemp("keys")
    try:
        network = docker_client.networks.create(
            run_id,
            driver="bridge",
            labels=labels,
            ipam=docker.types.IPAMConfig(pool_configs=[docker.types.IPAMPool(subnet=SUBNET)]),
        )
    except docker.errors.APIError as exc:
        pytest.fail(
            f"cannot create the test network on {SUBNET} ({exc.explanation}) — "
            "set TASKFLEET_CT_SUBNET to a free /24"
        )
    try:
        key = make_authkey(keys, "authkey")
        journal = docker_client.volumes.create(f"{run_id}-journal", labels=labels)
        master = docker_client.containers.run(
            built_images.master,  # the image's default command: bind 0.0.0.0:7451, journal volume
            name=f"{run_id}-master",
            hostname="master",
            detach=True,
            network=network.name,
            volumes={
                str(key): {"bind": SECRET, "mode": "ro"},
                journal.name: {"bind": "/var/lib/taskfleet", "mode": "rw"},
            },
            labels={**labels, "io.taskfleet.role": "master"},
            healthcheck=HEALTH_FAST,
        )
        cl = Cluster(docker_client, built_images, run_id, network.name, key, master)
        cl.workers = [cl.run_worker("w1"), cl.run_worker("w2")]
        yield cl
    finally:
        _remove_by_label(docker_client, label)

"""A named lab's subnet is chosen against the real engine's networks."""

from __future__ import annotations

import ipaddress

import docker
import pytest

from taskfleet.ops import engine
from taskfleet.ops.lab import LabConfig

from .conftest import SUBNET, Cluster

pytestmark = pytest.mark.containers


def test_the_engines_networks_are_read_with_their_subnets(
    docker_client: docker.DockerClient, cluster: Cluster
) -> None:
    networks = engine.network_subnets(docker_client)
    assert networks[cluster.network] == [SUBNET]
    assert "bridge" in networks  # Docker's default network is listed too


def test_a_derived_lab_subnet_overlaps_no_network_of_the_engine(
    docker_client: docker.DockerClient, cluster: Cluster
) -> None:
    taken = [
        net
        for subnets in engine.network_subnets(docker_client).values()
        for raw in subnets
        if isinstance(net := ipaddress.ip_network(raw, strict=False), ipaddress.IPv4Network)
    ]
    for name in ("ux", "mine", "ci", "review"):
        cfg = LabConfig.from_env({"TASKFLEET_LAB": f"{cluster.run_id}-{name}"})
        assert not any(cfg.subnet.overlaps(net) for net in taken), (name, cfg.subnet)

"""What a lab should look like: its name, subnet, inventory folder and hosts.

One name decides everything (``make lab LAB=ux``, or env ``TASKFLEET_LAB``):

* the network ``taskfleet-<lab>``, containers ``taskfleet-<lab>-<host>``, state
  under ``.lab/<lab>/``;
* the subnet: ``172.28.10.0/24`` for the default lab ``local``; for any other
  name the subnet its network already has, else the first /24 from
  ``172.28.100.0/24`` … ``172.28.254.0/24`` (starting at a place picked by a
  hash of the name, so the same name gets the same subnet) that overlaps no
  Docker network;
* the inventory folder ``inventory/<lab>``.

``TASKFLEET_LAB_SUBNET`` and ``TASKFLEET_LAB_INVENTORY`` override the derived
subnet and folder (the e2e suite and a lab outside the repository use them).
Bad values raise :class:`LabError` naming the variable and a valid example.
"""

from __future__ import annotations

import hashlib
import ipaddress
import os
import re
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path

from taskfleet.ops import engine
from taskfleet.ops.engine import REPO
from taskfleet.ops.errors import LabError
from taskfleet.ops.inventory import DEFAULT_LAB, MASTER_GROUP, WORKERS_GROUP, lab_inventory

IMAGES_DIR = REPO / "images"

DEFAULT_NAME = DEFAULT_LAB
DEFAULT_SUBNET = "172.28.10.0/24"
DEFAULT_WORKERS = 3
MAX_WORKERS = 80  # .11 … .90 stay below the outsider's .99
#: Where a named lab's subnet comes from: a /24 out of 172.28.100-254, clear of the
#: default lab's 172.28.10.0/24 and the container tests' default 172.28.50.0/24.
DERIVED_SUBNETS = tuple(ipaddress.IPv4Network(f"172.28.{n}.0/24") for n in range(100, 255))

DEPLOY_USER = "deploy"
DEPLOY_UID = 1000  # fixed by images/labhost/Dockerfile (useradd --uid)
APT_CACHE_PORT = 3142

LABEL_MANAGED = "io.taskfleet.managed"
LABEL_ROLE = "io.taskfleet.role"
LABEL_LAB = "io.taskfleet.lab"
LABEL_HOST = "io.taskfleet.lab.host"
ROLE_HOST = "lab-host"
ROLE_HOST_VOLUME = "lab-docker-volume"
ROLE_NETWORK = "lab-network"
ROLE_APTCACHE = "aptcache"
ROLE_APTCACHE_VOLUME = "aptcache-volume"

#: Docker network name → its subnets (what :func:`engine.network_subnets` returns).
Networks = Mapping[str, Sequence[str]]


def network_name(lab: str) -> str:
    return f"taskfleet-{lab}"


def subnet_candidates(lab: str) -> list[ipaddress.IPv4Network]:
    """Every derivable subnet, starting where a hash of the lab's name points."""
    start = int.from_bytes(hashlib.sha256(lab.encode()).digest()[:4], "big") % len(DERIVED_SUBNETS)
    return [*DERIVED_SUBNETS[start:], *DERIVED_SUBNETS[:start]]


def _ipv4(raw: str) -> ipaddress.IPv4Network | None:
    try:
        return ipaddress.IPv4Network(raw, strict=False)
    except ValueError:  # an IPv6 pool, or something Docker did not validate
        return None


def derive_subnet(lab: str, networks: Networks) -> ipaddress.IPv4Network | None:
    """The subnet of a named lab: its own network's, else the first free candidate.

    A candidate is free when it overlaps no subnet of ``networks``; None when
    none is.
    """
    for raw in networks.get(network_name(lab), ()):
        own = _ipv4(raw)
        if own is not None:
            return own
    taken = [net for subnets in networks.values() for raw in subnets if (net := _ipv4(raw))]
    for candidate in subnet_candidates(lab):
        if not any(candidate.overlaps(net) for net in taken):
            return candidate
    return None


def _docker_networks() -> Networks:
    return engine.network_subnets(engine.connect(LabError))


@dataclass(frozen=True)
class HostSpec:
    """One simulated machine: inventory name, address, inventory group (None: no group)."""

    name: str
    ip: str
    group: str | None


@dataclass(frozen=True)
class LabConfig:
    """What a lab should look like; built from the environment by :meth:`from_env`."""

    name: str = DEFAULT_NAME
    subnet: ipaddress.IPv4Network = field(
        default_factory=lambda: ipaddress.IPv4Network(DEFAULT_SUBNET)
    )
    inventory_dir: Path = REPO / "inventory" / DEFAULT_NAME
    workers: int = DEFAULT_WORKERS
    state_root: Path = REPO / ".lab"
    apt_cache: bool = True

    @classmethod
    def from_env(
        cls,
        env: Mapping[str, str] | None = None,
        *,
        networks: Callable[[], Networks] = _docker_networks,
        need_free_subnet: bool = True,
    ) -> LabConfig:
        """Read TASKFLEET_LAB, TASKFLEET_LAB_SUBNET, TASKFLEET_LAB_INVENTORY, LAB_WORKERS,
        TASKFLEET_LAB_APT_CACHE (0 disables the apt cache).

        ``networks`` is asked (it connects to Docker) only when the subnet must be
        derived. Without ``need_free_subnet`` (``down`` and ``status`` never create
        a network) a lab with no network and no free /24 gets its first candidate
        instead of an error. Raises LabError on bad values.
        """
        env = os.environ if env is None else env
        name = env.get("TASKFLEET_LAB") or DEFAULT_NAME
        if not re.fullmatch(r"[a-z0-9][a-z0-9-]{0,29}", name):
            raise LabError(
                f"TASKFLEET_LAB={name!r} is not a valid lab name",
                "use 1-30 characters a-z, 0-9 and '-', starting with a letter or digit",
            )
        raw_workers = env.get("LAB_WORKERS") or str(DEFAULT_WORKERS)
        try:
            workers = int(raw_workers)
        except ValueError:
            workers = -1
        if not 1 <= workers <= MAX_WORKERS:
            raise LabError(
                f"LAB_WORKERS={raw_workers!r} must be a whole number from 1 to {MAX_WORKERS}",
                "e.g. LAB_WORKERS=3",
            )
        apt_cache = (env.get("TASKFLEET_LAB_APT_CACHE") or "1").lower() not in {"0", "no", "false"}
        raw_subnet = env.get("TASKFLEET_LAB_SUBNET")
        if raw_subnet:
            subnet = _parse_subnet(raw_subnet)
        elif name == DEFAULT_NAME:
            subnet = ipaddress.IPv4Network(DEFAULT_SUBNET)
        else:
            subnet = _derived(name, networks(), need_free_subnet)
        return cls(name, subnet, lab_inventory(env), workers, REPO / ".lab", apt_cache)

    # Everything below is derived, so two labs never share a name, address or file.

    @property
    def network(self) -> str:
        return network_name(self.name)

    @property
    def state_dir(self) -> Path:
        return self.state_root / self.name

    @property
    def key(self) -> Path:
        return self.state_dir / "id_ed25519"

    @property
    def known_hosts(self) -> Path:
        return self.state_dir / "known_hosts"

    @property
    def hosts_file(self) -> Path:
        return self.inventory_dir / "hosts.yml"

    @property
    def lock_file(self) -> Path:
        return self.state_root / f".{self.name}.lock"

    def addr(self, offset: int) -> str:
        return str(self.subnet.network_address + offset)

    @property
    def gateway(self) -> str:
        """The control node's own address on the lab network (Docker's bridge gateway)."""
        return self.addr(1)

    @property
    def aptcache_ip(self) -> str:
        return self.addr(2)

    def container(self, host: str) -> str:
        return f"taskfleet-{self.name}-{host}"

    def docker_volume(self, host: str) -> str:
        return f"taskfleet-{self.name}-{host}-docker"

    @property
    def aptcache_volume(self) -> str:
        return f"taskfleet-{self.name}-aptcache"

    def make(self, target: str) -> str:
        """The make command line for ``target`` on this lab (``make lab-down LAB=ux``)."""
        return f"make {target}" if self.name == DEFAULT_NAME else f"make {target} LAB={self.name}"

    def hosts(self) -> list[HostSpec]:
        """master .10, worker1 … .11 …, outsider .99 (in no group)."""
        specs = [HostSpec("master", self.addr(10), MASTER_GROUP)]
        specs += [
            HostSpec(f"worker{i}", self.addr(10 + i), WORKERS_GROUP)
            for i in range(1, self.workers + 1)
        ]
        specs.append(HostSpec("outsider", self.addr(99), None))
        return specs

    def labels(self, role: str, host: str | None = None) -> dict[str, str]:
        labels = {LABEL_MANAGED: "true", LABEL_ROLE: role, LABEL_LAB: self.name}
        if host:
            labels[LABEL_HOST] = host
        return labels


def _parse_subnet(raw: str) -> ipaddress.IPv4Network:
    try:
        subnet = ipaddress.IPv4Network(raw)
    except ValueError as exc:
        raise LabError(
            f"TASKFLEET_LAB_SUBNET={raw!r} is not an IPv4 network ({exc})",
            "use a /24 such as 172.28.20.0/24",
        ) from None
    if subnet.prefixlen > 24 or not subnet.is_private:
        raise LabError(
            f"TASKFLEET_LAB_SUBNET={raw} must be a private /24 or larger (hosts use .2 … .99)",
            "use e.g. 172.28.20.0/24",
        )
    return subnet


def _derived(name: str, networks: Networks, need_free: bool) -> ipaddress.IPv4Network:
    subnet = derive_subnet(name, networks)
    if subnet is not None:
        return subnet
    if not need_free:
        return subnet_candidates(name)[0]
    first, last = DERIVED_SUBNETS[0], DERIVED_SUBNETS[-1]
    raise LabError(
        f"no free /24 for lab {name!r}: each of {first} … {last} overlaps a Docker network",
        "remove a lab you no longer use (make lab-down LAB=<name>), "
        "or set TASKFLEET_LAB_SUBNET to a free private /24",
    )

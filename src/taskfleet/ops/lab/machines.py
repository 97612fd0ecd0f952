"""The Docker side of a lab: its images, network, volumes, host containers and apt cache.

Each ``ensure_*`` makes one object exist as the config says and reports what it
did; an object with the lab's name that the lab did not make is never touched
(:class:`LabError` says so). Hosts are containers created with a fixed address
and started only once their keys are inside.
"""

from __future__ import annotations

import io
import ipaddress
import os
import socket
import tarfile
import time
from typing import Any

import docker
import docker.errors
import docker.types

from taskfleet.ops import engine
from taskfleet.ops.engine import Log, api_error, image_id
from taskfleet.ops.errors import ImagesError, LabError
from taskfleet.ops.lab.config import (
    APT_CACHE_PORT,
    DEPLOY_USER,
    IMAGES_DIR,
    LABEL_HOST,
    LABEL_LAB,
    LABEL_ROLE,
    ROLE_APTCACHE,
    ROLE_APTCACHE_VOLUME,
    ROLE_HOST,
    ROLE_HOST_VOLUME,
    ROLE_NETWORK,
    HostSpec,
    LabConfig,
)
from taskfleet.ops.lab.keys import host_files
from taskfleet.ops.lab.render import host_archive

# The Docker-in-Docker recipe that works on kernels that refuse --privileged (they
# withhold CAP_SYS_RESOURCE): these capabilities, no seccomp/AppArmor profile, the
# host's cgroup tree and a volume on /var/lib/docker (see start_host).
HOST_CAPS = [
    "SYS_ADMIN",
    "NET_ADMIN",
    "NET_RAW",
    "MKNOD",
    "SYS_PTRACE",
    "SYS_CHROOT",
    "SETFCAP",
    "SETPCAP",
    "AUDIT_WRITE",
    "AUDIT_CONTROL",
    "IPC_LOCK",
    "DAC_READ_SEARCH",
    "SYS_NICE",
]
HOST_SECURITY_OPT = ["seccomp=unconfined", "apparmor=unconfined"]

SSH_WAIT_S = 60.0
APT_CACHE_WAIT_S = 20.0
SSH_BANNER = b"SSH-2.0-"


# --- images ------------------------------------------------------------------------------


def resolve_base(client: docker.DockerClient, log: Log) -> str:
    """The base image: TASKFLEET_LAB_BASE_IMAGE if set, else the images module's taskfleet-base."""
    override = os.environ.get("TASKFLEET_LAB_BASE_IMAGE")
    if override:
        return override
    from taskfleet.ops import images  # one base recipe for the whole project

    try:
        return images.build_base(client, log=lambda m: log(f"   {m}"))
    except ImagesError as exc:
        raise LabError(exc.what, exc.fix) from None


def ensure_image(client: docker.DockerClient, kind: str, base: str, log: Log) -> str:
    """Build ``taskfleet-<kind>:<hash>`` from images/<kind>/ unless that tag exists."""
    base_id = image_id(client, base)
    if base_id is None:
        raise LabError(
            f"base image {base} is not in the Docker engine",
            "run make base-image (or unset TASKFLEET_LAB_BASE_IMAGE)",
        )
    context = IMAGES_DIR / kind
    tag = f"taskfleet-{kind}:{engine.tree_hash(engine.files_under(context), base_id)}"
    if image_id(client, tag):
        log(f"   image {tag}: up to date")
        return tag
    log(f"   image {tag}: building from images/{kind} on {base}")
    started = time.monotonic()
    engine.build(
        client,
        context,
        tag,
        buildargs={"BASE_IMAGE": base},
        error=LabError,
        what=f"building {tag}",
        fix=f"fix images/{kind}/Dockerfile and retry",
    )
    log(f"   image {tag}: built in {time.monotonic() - started:.0f} s")
    engine.prune_superseded(client, f"taskfleet-{kind}", tag, log)
    return tag


# --- network, volumes, containers --------------------------------------------------------


def find_container(client: docker.DockerClient, name: str) -> Any | None:
    try:
        return client.containers.get(name)
    except docker.errors.NotFound:
        return None


def check_ours(obj: Any, what: str, cfg: LabConfig) -> None:
    """Raise LabError unless ``obj`` (a container or network) carries the lab's label."""
    labels = obj.attrs.get("Config", obj.attrs).get("Labels") or {}
    if labels.get(LABEL_LAB) != cfg.name:
        raise LabError(
            f"{what} exists but does not belong to lab {cfg.name!r}",
            "remove it by hand, or use another lab name (make lab LAB=<name>)",
        )


def ensure_network(client: docker.DockerClient, cfg: LabConfig, log: Log) -> None:
    """The lab's bridge network on its subnet (kept when it is there already)."""
    existing = [n for n in client.networks.list(names=[cfg.network]) if n.name == cfg.network]
    if existing:
        net = existing[0]
        net.reload()
        if (net.attrs.get("Labels") or {}).get(LABEL_LAB) != cfg.name:
            raise LabError(
                f"network {cfg.network} exists but was not made by lab {cfg.name!r}",
                "remove it (docker network rm), or use another lab name (make lab LAB=<name>)",
            )
        subnets = [c.get("Subnet") for c in net.attrs["IPAM"]["Config"] or []]
        if str(cfg.subnet) not in subnets:
            raise LabError(
                f"lab {cfg.name!r} already runs on {', '.join(map(str, subnets))}, "
                f"not {cfg.subnet}",
                f"run `{cfg.make('lab-down')}` first to change its subnet",
            )
        log(f"   network {cfg.network} ({cfg.subnet}): kept")
        return
    # Dynamic addresses (none expected) come from the upper half, away from .2 … .99.
    upper = ipaddress.IPv4Network((cfg.subnet.network_address + 128, 25))
    ipam = docker.types.IPAMConfig(
        pool_configs=[
            docker.types.IPAMPool(subnet=str(cfg.subnet), gateway=cfg.gateway, iprange=str(upper))
        ]
    )
    try:
        client.networks.create(
            cfg.network,
            driver="bridge",
            ipam=ipam,
            labels=cfg.labels(ROLE_NETWORK),
            check_duplicate=True,
        )
    except docker.errors.APIError as exc:
        text = api_error(exc)
        if "overlap" in text.lower():
            raise LabError(
                f"subnet {cfg.subnet} overlaps another Docker network or route",
                "pick a free one with TASKFLEET_LAB_SUBNET=172.28.N.0/24",
            ) from None
        raise LabError(
            f"cannot create network {cfg.network}: {text}", "see docker network ls"
        ) from None
    log(f"   network {cfg.network} ({cfg.subnet}): created")


def ensure_volume(client: docker.DockerClient, name: str, labels: dict[str, str]) -> None:
    try:
        client.volumes.get(name)
    except docker.errors.NotFound:
        client.volumes.create(name, labels=labels)


def create_container(
    client: docker.DockerClient,
    cfg: LabConfig,
    *,
    name: str,
    image: str,
    hostname: str,
    ip: str,
    labels: dict[str, str],
    binds: dict[str, dict[str, str]],
    host_config: dict[str, Any],
) -> str:
    """Create (not start) a container with a fixed address on the lab network."""
    api = client.api
    hc = api.create_host_config(binds=binds, network_mode=cfg.network, **host_config)
    net = api.create_networking_config(
        {cfg.network: api.create_endpoint_config(ipv4_address=ip, aliases=[hostname])}
    )
    try:
        created = api.create_container(
            image,
            name=name,
            hostname=hostname,
            labels=labels,
            host_config=hc,
            networking_config=net,
            detach=True,
        )
    except docker.errors.APIError as exc:
        raise LabError(
            f"cannot create {name}: {api_error(exc)}",
            f"run {cfg.make('lab-down')}, then {cfg.make('lab')}",
        ) from None
    return str(created["Id"])


def address_on(container: Any, cfg: LabConfig) -> str | None:
    """The container's address on the lab network (None or '' when it has none)."""
    networks = container.attrs["NetworkSettings"]["Networks"]
    address: str | None = networks.get(cfg.network, {}).get("IPAddress")
    return address


def read_file(client: docker.DockerClient, cid: str, path: str) -> bytes | None:
    """A file's bytes from a container (running or not), None when absent."""
    try:
        stream, _ = client.api.get_archive(cid, path)
    except docker.errors.NotFound:
        return None
    with tarfile.open(fileobj=io.BytesIO(b"".join(stream))) as tar:
        member = tar.next()
        handle = tar.extractfile(member) if member else None
        return handle.read() if handle else None


def wait_port(ip: str, port: int, timeout: float, banner: bytes | None) -> bool:
    """True once ``ip:port`` accepts (and sends ``banner`` first, if given); bounded."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            with socket.create_connection((ip, port), timeout=2) as sock:
                if banner is None:
                    return True
                sock.settimeout(3)
                if sock.recv(64).startswith(banner):
                    return True
        except OSError:
            pass
        time.sleep(0.3)
    return False


# --- the lab's containers ----------------------------------------------------------------


def host_containers(client: docker.DockerClient, cfg: LabConfig) -> list[Any]:
    """Every host container of the lab, running or not."""
    return list(
        client.containers.list(
            all=True, filters={"label": [f"{LABEL_LAB}={cfg.name}", f"{LABEL_ROLE}={ROLE_HOST}"]}
        )
    )


def remove_host(client: docker.DockerClient, cfg: LabConfig, container: Any) -> str:
    """Remove a host container and its Docker volume; return the host's name."""
    host = str(container.labels.get(LABEL_HOST, ""))
    container.remove(force=True)
    try:
        client.volumes.get(cfg.docker_volume(host)).remove(force=True)
    except docker.errors.NotFound:
        pass
    return host


def start_host(
    client: docker.DockerClient, cfg: LabConfig, spec: HostSpec, image: str, proxy: bool
) -> tuple[str, str]:
    """Make one host exist and run with the right keys; return (container ID, what was done)."""
    name = cfg.container(spec.name)
    container = find_container(client, name)
    files = host_files(cfg, spec.name, proxy)
    if container is None:
        volume = cfg.docker_volume(spec.name)
        ensure_volume(client, volume, cfg.labels(ROLE_HOST_VOLUME, spec.name))
        cid = create_container(
            client,
            cfg,
            name=name,
            image=image,
            hostname=spec.name,
            ip=spec.ip,
            labels=cfg.labels(ROLE_HOST, spec.name),
            binds={
                # The inner engine needs the cgroup tree to start containers and
                # a real (non-overlay) filesystem for overlay2.
                "/sys/fs/cgroup": {"bind": "/sys/fs/cgroup", "mode": "rw"},
                volume: {"bind": "/var/lib/docker", "mode": "rw"},
            },
            host_config={"cap_add": HOST_CAPS, "security_opt": HOST_SECURITY_OPT},
        )
        # Keys go in before the first start: sshd never runs without its own host key.
        client.api.put_archive(cid, "/", host_archive(files))
        client.api.start(cid)
        return cid, "created"
    check_ours(container, f"container {name}", cfg)
    ip = address_on(container, cfg)
    if container.status == "running" and ip not in (None, "", spec.ip):
        raise LabError(
            f"{name} runs at {ip}, not {spec.ip}",
            f"run {cfg.make('lab-down')}, then {cfg.make('lab')}",
        )
    # Control-side keys may have been regenerated (.lab/ deleted): re-inject if they differ.
    pub = files["/etc/ssh/ssh_host_ed25519_key.pub"][0]
    auth = files[f"/home/{DEPLOY_USER}/.ssh/authorized_keys"][0]
    stale = (
        read_file(client, container.id, "/etc/ssh/ssh_host_ed25519_key.pub") != pub
        or read_file(client, container.id, f"/home/{DEPLOY_USER}/.ssh/authorized_keys") != auth
    )
    if stale or proxy:
        client.api.put_archive(container.id, "/", host_archive(files))
    if container.status != "running":
        container.start()
        return container.id, "started"
    if stale:
        # SIGHUP makes the listening sshd re-exec and load the new host key.
        container.exec_run(["sh", "-c", "kill -HUP $(cat /run/sshd.pid)"])
        return container.id, "kept (keys refreshed)"
    if container.attrs["Image"] != image_id(client, image):
        # Replacing a running machine would throw away what was deployed on it.
        refresh = f"{cfg.make('lab-down')} && {cfg.make('lab')}"
        return container.id, f"kept (older lab image: {refresh} to refresh)"
    return container.id, "kept"


def ensure_aptcache(client: docker.DockerClient, cfg: LabConfig, image: str, log: Log) -> bool:
    """Start the lab's apt-cacher-ng; True when it answers (hosts then use it)."""
    name = cfg.container("aptcache")
    container = find_container(client, name)
    if container is not None:
        check_ours(container, f"container {name}", cfg)
    if container is None:
        ensure_volume(client, cfg.aptcache_volume, cfg.labels(ROLE_APTCACHE_VOLUME))
        cid = create_container(
            client,
            cfg,
            name=name,
            image=image,
            hostname="aptcache",
            ip=cfg.aptcache_ip,
            labels=cfg.labels(ROLE_APTCACHE, "aptcache"),
            binds={cfg.aptcache_volume: {"bind": "/var/cache/apt-cacher-ng", "mode": "rw"}},
            host_config={"restart_policy": {"Name": "unless-stopped"}},
        )
        client.api.start(cid)
        action = "created"
    elif container.status != "running":
        container.start()
        action = "started"
    else:
        action = "kept"
    if wait_port(cfg.aptcache_ip, APT_CACHE_PORT, APT_CACHE_WAIT_S, banner=None):
        log(f"   apt cache {name} ({cfg.aptcache_ip}:{APT_CACHE_PORT}): {action}")
        return True
    log(f"   apt cache {name}: {action} but not answering — hosts will use the mirror directly")
    return False

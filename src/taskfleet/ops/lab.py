"""The lab: simulated machines (Docker-in-Docker hosts with sshd) on one computer.

``python -m taskfleet.ops.lab up | down [--purge] | status [--json]`` is behind
``make lab``, ``make lab-down`` and ``make lab-status``.

A lab named ``<lab>`` (env ``TASKFLEET_LAB``, default ``local``) is:

* the bridge network ``taskfleet-<lab>`` with a fixed subnet
  (``TASKFLEET_LAB_SUBNET``, default ``172.28.10.0/24``);
* containers ``taskfleet-<lab>-<host>``: ``master`` at .10, ``worker1`` … at
  .11 …  (``LAB_WORKERS``, default 3) and ``outsider`` at .99, which is in the
  inventory's ``all`` but in no group (it exists to prove the firewall). Each
  runs images/labhost (sshd, sudo, python3, firewall tools, no Docker engine)
  with the capabilities, cgroup mount and ``/var/lib/docker`` volume that let
  the deploy install and run a Docker engine inside (../ENVIRONMENT recipe:
  ``--privileged`` is refused on these kernels);
* ``taskfleet-<lab>-aptcache`` at .2: apt-cacher-ng, which every host's apt
  uses, with its cache in a volume that outlives ``down`` (``--purge`` removes it);
* control-side files: ``.lab/<lab>/id_ed25519`` (the deploy user's key), one
  ed25519 host key per host generated here and put into the container before
  it starts, and the exact ``.lab/<lab>/known_hosts`` — strict host-key
  checking, never trust on first use;
* the inventory ``<TASKFLEET_LAB_INVENTORY>/hosts.yml`` (default
  ``inventory/local``) with the connection variables set per host.

Everything created carries ``io.taskfleet.managed=true`` and
``io.taskfleet.lab=<lab>``; ``down`` removes exactly what carries its lab's label.
``up`` is idempotent: running hosts are kept, missing ones created, stopped
ones started, workers beyond ``LAB_WORKERS`` removed.

Errors raise :class:`LabError`; the CLI prints ``taskfleet: error: <what> — <what
to do>`` and exits 1.
"""

from __future__ import annotations

import argparse
import contextlib
import fcntl
import hashlib
import io
import ipaddress
import json
import os
import re
import shlex
import shutil
import socket
import subprocess
import sys
import tarfile
import tempfile
import time
from collections.abc import Callable, Iterator, Mapping
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import docker
import docker.errors
import yaml

from taskfleet.ops.inventory import OpsError

REPO = Path(__file__).resolve().parents[3]
IMAGES_DIR = REPO / "images"

DEFAULT_NAME = "local"
DEFAULT_SUBNET = "172.28.10.0/24"
DEFAULT_INVENTORY = "inventory/local"
DEFAULT_WORKERS = 3
MAX_WORKERS = 80  # .11 … .90 stay below the outsider's .99

MASTER_GROUP = "taskfleet_master"
WORKERS_GROUP = "taskfleet_workers"
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

# The Docker-in-Docker recipe that works on kernels that refuse --privileged
# (it withholds CAP_SYS_RESOURCE): see ENVIRONMENT.md "Simulated machines".
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

Log = Callable[[str], None]


class LabError(OpsError):
    """The lab cannot be brought into the asked state; the message says what to do."""


def _log(msg: str) -> None:
    print(msg, flush=True)


# --------------------------------------------------------------------------- config


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
    inventory_dir: Path = REPO / DEFAULT_INVENTORY
    workers: int = DEFAULT_WORKERS
    state_root: Path = REPO / ".lab"
    apt_cache: bool = True

    @classmethod
    def from_env(cls, env: Mapping[str, str] | None = None) -> LabConfig:
        """Read TASKFLEET_LAB, TASKFLEET_LAB_SUBNET, TASKFLEET_LAB_INVENTORY, LAB_WORKERS,
        TASKFLEET_LAB_APT_CACHE (0 disables the apt cache). Raises LabError on bad values."""
        env = os.environ if env is None else env
        name = env.get("TASKFLEET_LAB") or DEFAULT_NAME
        if not re.fullmatch(r"[a-z0-9][a-z0-9-]{0,29}", name):
            raise LabError(
                f"TASKFLEET_LAB={name!r} is not a valid lab name — use 1-30 characters "
                "a-z, 0-9 and '-', starting with a letter or digit"
            )
        raw_subnet = env.get("TASKFLEET_LAB_SUBNET") or DEFAULT_SUBNET
        try:
            subnet = ipaddress.IPv4Network(raw_subnet)
        except ValueError as exc:
            raise LabError(
                f"TASKFLEET_LAB_SUBNET={raw_subnet!r} is not an IPv4 network ({exc}) — "
                "use a /24 such as 172.28.20.0/24"
            ) from None
        if subnet.prefixlen > 24 or not subnet.is_private:
            raise LabError(
                f"TASKFLEET_LAB_SUBNET={raw_subnet} must be a private /24 or larger "
                "(hosts use .2 … .99) — use e.g. 172.28.20.0/24"
            )
        raw_workers = env.get("LAB_WORKERS") or str(DEFAULT_WORKERS)
        try:
            workers = int(raw_workers)
        except ValueError:
            workers = -1
        if not 1 <= workers <= MAX_WORKERS:
            raise LabError(
                f"LAB_WORKERS={raw_workers!r} must be a whole number from 1 to {MAX_WORKERS}"
                " — e.g. LAB_WORKERS=3"
            )
        inventory = Path(env.get("TASKFLEET_LAB_INVENTORY") or REPO / DEFAULT_INVENTORY)
        apt_cache = (env.get("TASKFLEET_LAB_APT_CACHE") or "1").lower() not in {"0", "no", "false"}
        return cls(name, subnet, inventory.resolve(), workers, REPO / ".lab", apt_cache)

    # Everything below is derived, so two labs never share a name, address or file.

    @property
    def network(self) -> str:
        return f"taskfleet-{self.name}"

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


# --------------------------------------------------------------------------- pure builders


def render_known_hosts(cfg: LabConfig, host_keys: Mapping[str, str]) -> str:
    """known_hosts lines: each host by address, inventory name and container name.

    ``host_keys`` maps host → public key line (``ssh-ed25519 AAAA… comment``).
    """
    lines = []
    for spec in cfg.hosts():
        keytype, blob = host_keys[spec.name].split()[:2]
        lines.append(f"{spec.ip},{spec.name},{cfg.container(spec.name)} {keytype} {blob}")
    return "\n".join(lines) + "\n"


def render_inventory(cfg: LabConfig) -> str:
    """The generated hosts.yml (groups, addresses, connection variables).

    Connection variables are host variables on purpose: they then win over any
    ``group_vars`` a user adds, and each lab's file points at its own key.
    """
    conn = {
        "ansible_user": DEPLOY_USER,
        "ansible_ssh_private_key_file": str(cfg.key),
        "ansible_ssh_common_args": (
            # Quoted: Ansible splits these with shlex, and a clone may live under a space.
            f"-o UserKnownHostsFile={shlex.quote(str(cfg.known_hosts))} "
            "-o StrictHostKeyChecking=yes"
        ),
        "ansible_python_interpreter": "/usr/bin/python3",
    }
    hostvars = {s.name: {"ansible_host": s.ip, **conn} for s in cfg.hosts()}
    groups: dict[str, Any] = {}
    for group in (MASTER_GROUP, WORKERS_GROUP):
        groups[group] = {
            "hosts": {s.name: hostvars[s.name] for s in cfg.hosts() if s.group == group}
        }
    data = {
        "all": {
            "vars": {
                # Facts about the lab that group_vars may use (e.g. the admin source
                # the firewall must keep SSH open for is the control node's address).
                "taskfleet_lab_name": cfg.name,
                "taskfleet_lab_subnet": str(cfg.subnet),
                "taskfleet_lab_control_ip": cfg.gateway,
            },
            "hosts": {s.name: hostvars[s.name] for s in cfg.hosts() if s.group is None},
            "children": groups,
        }
    }
    header = (
        f"# Generated by `python -m taskfleet.ops.lab up` for lab {cfg.name!r} "
        f"({cfg.subnet}) — do not edit;\n"
        "# it is rewritten by every `make lab`. Settings belong in group_vars/.\n"
    )
    return header + str(yaml.safe_dump(data, sort_keys=False, default_flow_style=False))


def apt_proxy_conf(cfg: LabConfig) -> str:
    return (
        "// Written by the taskfleet lab: apt goes through the lab's apt-cacher-ng.\n"
        f'Acquire::http::Proxy "http://{cfg.aptcache_ip}:{APT_CACHE_PORT}";\n'
    )


def host_archive(files: Mapping[str, tuple[bytes, int, int]]) -> bytes:
    """A tar of ``path → (content, mode, uid)`` (gid = uid) for ``put_archive`` at ``/``."""
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w") as tar:
        for path, (content, mode, uid) in sorted(files.items()):
            info = tarfile.TarInfo(path.lstrip("/"))
            info.size, info.mode, info.uid, info.gid = len(content), mode, uid, uid
            info.mtime = int(time.time())
            tar.addfile(info, io.BytesIO(content))
    return buf.getvalue()


def context_hash(directory: Path, base_id: str) -> str:
    """Content hash of a build context (paths, modes, bytes) and the base image ID."""
    h = hashlib.sha256(base_id.encode())
    for path in sorted(directory.rglob("*")):
        if path.is_file():
            rel = path.relative_to(directory).as_posix()
            h.update(f"\0{rel}\0{path.stat().st_mode & 0o777:o}\0".encode())
            h.update(path.read_bytes())
    return h.hexdigest()[:12]


# --------------------------------------------------------------------------- engine


def connect() -> docker.DockerClient:
    """A client for the local engine, or LabError saying how to start one."""
    try:
        client = docker.from_env(timeout=600)  # image builds stream for minutes
        client.ping()
    except docker.errors.DockerException:
        raise LabError(
            "the Docker engine does not answer — start it (dockerd, or systemctl start docker)"
        ) from None
    return client


def _api_error(exc: docker.errors.APIError) -> str:
    return str(exc.explanation or exc).strip().splitlines()[0][:200]


def resolve_base(client: docker.DockerClient, log: Log) -> str:
    """The base image: TASKFLEET_LAB_BASE_IMAGE if set, else the images module's taskfleet-base."""
    override = os.environ.get("TASKFLEET_LAB_BASE_IMAGE")
    if override:
        return override
    from taskfleet.ops import images  # one base recipe for the whole project

    try:
        return images.build_base(client, log=lambda m: log(f"   {m}"))
    except images.ImagesError as exc:
        raise LabError(str(exc)) from None


def ensure_image(client: docker.DockerClient, kind: str, base: str, log: Log) -> str:
    """Build ``taskfleet-<kind>:<hash>`` from images/<kind>/ unless that tag exists."""
    try:
        base_id = str(client.images.get(base).id)
    except docker.errors.ImageNotFound:
        raise LabError(
            f"base image {base} is not in the Docker engine — run make base-image "
            "(or unset TASKFLEET_LAB_BASE_IMAGE)"
        ) from None
    context = IMAGES_DIR / kind
    tag = f"taskfleet-{kind}:{context_hash(context, base_id)}"
    try:
        client.images.get(tag)
        log(f"   image {tag}: up to date")
        return tag
    except docker.errors.ImageNotFound:
        pass
    log(f"   image {tag}: building from images/{kind} on {base}")
    started = time.monotonic()
    tail: list[str] = []
    for chunk in client.api.build(
        path=str(context),
        tag=tag,
        buildargs={"BASE_IMAGE": base},
        rm=True,
        forcerm=True,
        pull=False,
        decode=True,
    ):
        if "error" in chunk:
            detail = str(chunk["error"]).strip().splitlines()[-1]
            raise LabError(
                f"building {tag} failed: {detail[:200]} (last output: "
                f"{' | '.join(tail[-3:])[:300]}) — fix images/{kind}/Dockerfile and retry"
            )
        tail.extend(str(chunk.get("stream", "")).strip().splitlines())
        del tail[:-20]
    log(f"   image {tag}: built in {time.monotonic() - started:.0f} s")
    # Older builds of this image are dead weight; the engine refuses (and we skip)
    # any that a container, e.g. a kept lab host, still uses.
    for old in client.images.list(name=f"taskfleet-{kind}"):
        for old_tag in old.tags:
            if old_tag != tag:
                with contextlib.suppress(docker.errors.APIError):
                    client.images.remove(old_tag)
                    log(f"   image {old_tag}: removed (superseded)")
    return tag


def _find_container(client: docker.DockerClient, name: str) -> Any | None:
    try:
        return client.containers.get(name)
    except docker.errors.NotFound:
        return None


def _check_ours(obj: Any, what: str, cfg: LabConfig) -> None:
    labels = obj.attrs.get("Config", obj.attrs).get("Labels") or {}
    if labels.get(LABEL_LAB) != cfg.name:
        raise LabError(
            f"{what} exists but does not belong to lab {cfg.name!r} — remove it by hand "
            "or choose another lab name with TASKFLEET_LAB"
        )


def ensure_network(client: docker.DockerClient, cfg: LabConfig, log: Log) -> None:
    existing = [n for n in client.networks.list(names=[cfg.network]) if n.name == cfg.network]
    if existing:
        net = existing[0]
        net.reload()
        if (net.attrs.get("Labels") or {}).get(LABEL_LAB) != cfg.name:
            raise LabError(
                f"network {cfg.network} exists but was not made by lab {cfg.name!r} — "
                "remove it (docker network rm) or choose another TASKFLEET_LAB"
            )
        subnets = [c.get("Subnet") for c in net.attrs["IPAM"]["Config"] or []]
        if str(cfg.subnet) not in subnets:
            raise LabError(
                f"lab {cfg.name!r} already runs on {', '.join(map(str, subnets))}, not "
                f"{cfg.subnet} — run `make lab-down` first to change its subnet"
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
        text = _api_error(exc)
        if "overlap" in text.lower():
            raise LabError(
                f"subnet {cfg.subnet} overlaps another Docker network or route — pick a free "
                "one with TASKFLEET_LAB_SUBNET=172.28.N.0/24"
            ) from None
        raise LabError(
            f"cannot create network {cfg.network}: {text} — see docker network ls"
        ) from None
    log(f"   network {cfg.network} ({cfg.subnet}): created")


def _ensure_volume(client: docker.DockerClient, name: str, labels: dict[str, str]) -> None:
    try:
        client.volumes.get(name)
    except docker.errors.NotFound:
        client.volumes.create(name, labels=labels)


def _create_container(
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
            f"cannot create {name}: {_api_error(exc)} — run make lab-down, then make lab"
        ) from None
    return str(created["Id"])


def ensure_aptcache(client: docker.DockerClient, cfg: LabConfig, image: str, log: Log) -> bool:
    """Start the lab's apt-cacher-ng; True when it answers (hosts then use it)."""
    name = cfg.container("aptcache")
    box = _find_container(client, name)
    if box is not None:
        _check_ours(box, f"container {name}", cfg)
    if box is None:
        _ensure_volume(client, cfg.aptcache_volume, cfg.labels(ROLE_APTCACHE_VOLUME))
        cid = _create_container(
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
    elif box.status != "running":
        box.start()
        action = "started"
    else:
        action = "kept"
    if _wait_port(cfg.aptcache_ip, APT_CACHE_PORT, APT_CACHE_WAIT_S, banner=None):
        log(f"   apt cache {name} ({cfg.aptcache_ip}:{APT_CACHE_PORT}): {action}")
        return True
    log(f"   apt cache {name}: {action} but not answering — hosts will use the mirror directly")
    return False


def _wait_port(ip: str, port: int, timeout: float, banner: bytes | None) -> bool:
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


# --------------------------------------------------------------------------- keys


def _keygen(path: Path, comment: str) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    if path.exists() and path.with_suffix(".pub").exists():
        return
    path.unlink(missing_ok=True)
    path.with_suffix(".pub").unlink(missing_ok=True)
    if shutil.which("ssh-keygen") is None:
        raise LabError(
            "ssh-keygen not found — install the OpenSSH client (apt-get install openssh-client)"
        )
    subprocess.run(
        ["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-C", comment, "-f", str(path)],
        check=True,
        capture_output=True,
    )


def ensure_keys(cfg: LabConfig) -> dict[str, str]:
    """Create the client key and every host key (kept across runs); return host → public key."""
    cfg.state_dir.mkdir(parents=True, exist_ok=True)
    cfg.state_dir.chmod(0o700)
    _keygen(cfg.key, f"{DEPLOY_USER}@taskfleet-lab-{cfg.name}")
    pubs = {}
    for spec in cfg.hosts():
        path = cfg.state_dir / "hostkeys" / f"{spec.name}_ed25519"
        _keygen(path, f"{spec.name}.{cfg.name}.taskfleet-lab")
        pubs[spec.name] = path.with_suffix(".pub").read_text().strip()
    return pubs


def _host_files(cfg: LabConfig, host: str, with_proxy: bool) -> dict[str, tuple[bytes, int, int]]:
    key = cfg.state_dir / "hostkeys" / f"{host}_ed25519"
    files = {
        "/etc/ssh/ssh_host_ed25519_key": (key.read_bytes(), 0o600, 0),
        "/etc/ssh/ssh_host_ed25519_key.pub": (key.with_suffix(".pub").read_bytes(), 0o644, 0),
        f"/home/{DEPLOY_USER}/.ssh/authorized_keys": (
            cfg.key.with_suffix(".pub").read_bytes(),
            0o600,
            DEPLOY_UID,
        ),
    }
    if with_proxy:
        files["/etc/apt/apt.conf.d/01proxy"] = (apt_proxy_conf(cfg).encode(), 0o644, 0)
    return files


def _read_file(client: docker.DockerClient, cid: str, path: str) -> bytes | None:
    """A file's bytes from a container (running or not), None when absent."""
    try:
        stream, _ = client.api.get_archive(cid, path)
    except docker.errors.NotFound:
        return None
    with tarfile.open(fileobj=io.BytesIO(b"".join(stream))) as tar:
        member = tar.next()
        handle = tar.extractfile(member) if member else None
        return handle.read() if handle else None


def _write_atomic(path: Path, text: str, mode: int = 0o644) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.")
    with os.fdopen(fd, "w") as out:
        out.write(text)
    os.chmod(tmp, mode)
    os.replace(tmp, path)


# --------------------------------------------------------------------------- up / down / status


@contextlib.contextmanager
def _locked(cfg: LabConfig) -> Iterator[None]:
    """One ``up``/``down`` at a time per lab (a test session and a `make lab` may race)."""
    cfg.state_root.mkdir(parents=True, exist_ok=True)
    with open(cfg.state_root / f".{cfg.name}.lock", "w") as handle:
        try:
            fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            _log(f"   waiting for another up/down of lab {cfg.name} to finish")
            fcntl.flock(handle, fcntl.LOCK_EX)
        yield


@dataclass
class LabInfo:
    """What ``up`` made: enough for tests and tools to reach every host."""

    name: str
    network: str
    subnet: str
    inventory_dir: Path
    hosts: dict[str, str]  # inventory name → address
    key: Path
    known_hosts: Path
    containers: dict[str, str]  # inventory name → container ID


def _host_containers(client: docker.DockerClient, cfg: LabConfig) -> list[Any]:
    return list(
        client.containers.list(
            all=True, filters={"label": [f"{LABEL_LAB}={cfg.name}", f"{LABEL_ROLE}={ROLE_HOST}"]}
        )
    )


def _start_host(
    client: docker.DockerClient, cfg: LabConfig, spec: HostSpec, image: str, proxy: bool
) -> tuple[str, str]:
    """Make one host exist and run with the right keys; return (container ID, what was done)."""
    name = cfg.container(spec.name)
    box = _find_container(client, name)
    files = _host_files(cfg, spec.name, proxy)
    if box is None:
        volume = cfg.docker_volume(spec.name)
        _ensure_volume(client, volume, cfg.labels(ROLE_HOST_VOLUME, spec.name))
        cid = _create_container(
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
    _check_ours(box, f"container {name}", cfg)
    box_ip = box.attrs["NetworkSettings"]["Networks"].get(cfg.network, {}).get("IPAddress")
    if box.status == "running" and box_ip not in (None, "", spec.ip):
        raise LabError(f"{name} runs at {box_ip}, not {spec.ip} — run make lab-down, then make lab")
    # Control-side keys may have been regenerated (.lab/ deleted): re-inject if they differ.
    pub = files["/etc/ssh/ssh_host_ed25519_key.pub"][0]
    auth = files[f"/home/{DEPLOY_USER}/.ssh/authorized_keys"][0]
    stale = (
        _read_file(client, box.id, "/etc/ssh/ssh_host_ed25519_key.pub") != pub
        or _read_file(client, box.id, f"/home/{DEPLOY_USER}/.ssh/authorized_keys") != auth
    )
    if stale or proxy:
        client.api.put_archive(box.id, "/", host_archive(files))
    if box.status != "running":
        box.start()
        return box.id, "started"
    if stale:
        # SIGHUP makes the listening sshd re-exec and load the new host key.
        box.exec_run(["sh", "-c", "kill -HUP $(cat /run/sshd.pid)"])
        return box.id, "kept (keys refreshed)"
    if box.attrs["Image"] != client.images.get(image).id:
        # Replacing a running machine would throw away what was deployed on it.
        return box.id, "kept (older lab image: make lab-down && make lab to refresh)"
    return box.id, "kept"


def up(cfg: LabConfig | None = None, log: Log = _log) -> LabInfo:
    """Bring the lab to ``cfg`` (idempotent) and wait until every sshd answers.

    Raises LabError (engine down, subnet taken, a host that does not come up).
    """
    cfg = cfg or LabConfig.from_env()
    with _locked(cfg):
        return _up(cfg, log)


def _up(cfg: LabConfig, log: Log) -> LabInfo:
    started = time.monotonic()
    client = connect()
    log(
        f"==> lab {cfg.name}: {cfg.network} {cfg.subnet}, master + {cfg.workers} workers + outsider"
    )
    base = resolve_base(client, log)
    kinds = ["labhost", "aptcache"] if cfg.apt_cache else ["labhost"]
    # Both builds mostly wait on the mirror: run them side by side.
    with ThreadPoolExecutor(max_workers=2) as pool:
        built = list(pool.map(lambda kind: ensure_image(client, kind, base, log), kinds))
    labhost, aptcache = built[0], (built[1] if cfg.apt_cache else None)
    ensure_network(client, cfg, log)
    proxy = ensure_aptcache(client, cfg, aptcache, log) if aptcache else False
    host_keys = ensure_keys(cfg)
    # known_hosts first: it must be exact before anyone connects.
    _write_atomic(cfg.known_hosts, render_known_hosts(cfg, host_keys))

    wanted = {s.name for s in cfg.hosts()}
    for box in _host_containers(client, cfg):
        host = box.labels.get(LABEL_HOST, "")
        if host not in wanted:
            box.remove(force=True)
            try:
                client.volumes.get(cfg.docker_volume(host)).remove(force=True)
            except docker.errors.NotFound:
                pass
            log(f"   host {host}: removed (beyond LAB_WORKERS={cfg.workers})")

    containers: dict[str, str] = {}
    for spec in cfg.hosts():
        cid, action = _start_host(client, cfg, spec, labhost, proxy)
        containers[spec.name] = cid
        log(f"   host {spec.name:<9} {spec.ip:<15} {cfg.container(spec.name)}: {action}")

    with ThreadPoolExecutor(max_workers=8) as pool:
        ready = dict(
            zip(
                [s.name for s in cfg.hosts()],
                pool.map(
                    lambda s: _wait_port(s.ip, 22, SSH_WAIT_S, banner=b"SSH-2.0-"), cfg.hosts()
                ),
                strict=True,
            )
        )
    late = sorted(h for h, ok in ready.items() if not ok)
    if late:
        raise LabError(
            f"sshd did not answer within {SSH_WAIT_S:.0f} s on {', '.join(late)} — "
            f"see docker logs {cfg.container(late[0])}"
        )
    _write_atomic(cfg.hosts_file, render_inventory(cfg))
    _link_group_vars(cfg, log)
    rel = _display(cfg.hosts_file)
    log(
        f"==> lab {cfg.name} ready in {time.monotonic() - started:.0f} s: {rel}, "
        f"{_display(cfg.known_hosts)}, key {_display(cfg.key)}"
    )
    return LabInfo(
        cfg.name,
        cfg.network,
        str(cfg.subnet),
        cfg.inventory_dir,
        {s.name: s.ip for s in cfg.hosts()},
        cfg.key,
        cfg.known_hosts,
        containers,
    )


def _link_group_vars(cfg: LabConfig, log: Log) -> None:
    """A lab with its own inventory folder deploys with the local lab's settings.

    Only when that folder has no group_vars of its own (a symlink, so edits to
    inventory/local/group_vars apply to every lab).
    """
    local_vars = REPO / DEFAULT_INVENTORY / "group_vars"
    link = cfg.inventory_dir / "group_vars"
    if cfg.inventory_dir == REPO / DEFAULT_INVENTORY or link.exists() or link.is_symlink():
        return
    if local_vars.is_dir():
        link.symlink_to(local_vars)
        log(f"   {_display(link)} -> {_display(local_vars)}")


def _display(path: Path) -> str:
    try:
        return str(path.relative_to(Path.cwd()))
    except ValueError:
        return str(path)


def down(
    cfg: LabConfig | None = None, purge: bool = False, log: Log = _log
) -> dict[str, list[str]]:
    """Remove every container, volume and network labelled for the lab; return what went.

    The apt cache's volume stays (the next lab's installs are then fast) unless ``purge``.
    """
    cfg = cfg or LabConfig.from_env()
    with _locked(cfg):
        return _down(cfg, purge, log)


def _down(cfg: LabConfig, purge: bool, log: Log) -> dict[str, list[str]]:
    client = connect()
    selector = {"label": [f"{LABEL_LAB}={cfg.name}"]}
    removed: dict[str, list[str]] = {"containers": [], "volumes": [], "networks": []}
    for box in client.containers.list(all=True, filters=selector):
        box.remove(force=True)
        removed["containers"].append(box.name)
        log(f"   container {box.name}: removed")
    for vol in client.volumes.list(filters=selector):
        if vol.attrs.get("Labels", {}).get(LABEL_ROLE) == ROLE_APTCACHE_VOLUME and not purge:
            log(f"   volume {vol.name}: kept (the apt cache; `down --purge` removes it)")
            continue
        vol.remove(force=True)
        removed["volumes"].append(vol.name)
        log(f"   volume {vol.name}: removed")
    for net in client.networks.list(filters=selector):
        net.remove()
        removed["networks"].append(net.name)
        log(f"   network {net.name}: removed")
    # Generated files describe machines that no longer exist.
    cfg.hosts_file.unlink(missing_ok=True)
    shutil.rmtree(cfg.state_dir, ignore_errors=True)
    total = sum(len(v) for v in removed.values())
    log(
        f"==> lab {cfg.name}: removed {len(removed['containers'])} containers, "
        f"{len(removed['volumes'])} volumes, {len(removed['networks'])} networks"
        + ("" if total else " (nothing was running)")
    )
    return removed


def status(cfg: LabConfig | None = None) -> list[dict[str, str]]:
    """One row per expected host (and any extra one carrying the lab's label)."""
    cfg = cfg or LabConfig.from_env()
    client = connect()
    boxes = {
        b.labels.get(LABEL_HOST, b.name): b
        for b in client.containers.list(all=True, filters={"label": [f"{LABEL_LAB}={cfg.name}"]})
    }
    rows = []
    specs = [*cfg.hosts(), HostSpec("aptcache", cfg.aptcache_ip, None)]
    names = [s.name for s in specs] + sorted(set(boxes) - {s.name for s in specs})
    by_name = {s.name: s for s in specs}
    for host in names:
        box = boxes.get(host)
        spec = by_name.get(host)
        group = spec.group if spec and spec.group else ("-" if spec else "(extra)")
        state = box.status if box else "absent"
        ip = spec.ip if spec else ""
        if box is not None:
            ip = box.attrs["NetworkSettings"]["Networks"].get(cfg.network, {}).get("IPAddress", ip)
        port, banner = (APT_CACHE_PORT, None) if host == "aptcache" else (22, b"SSH-2.0-")
        answers = state == "running" and _wait_port(ip, port, 1.0, banner=banner)
        rows.append(
            {
                "host": host,
                "address": ip,
                "group": group,
                "container": cfg.container(host),
                "state": state,
                "service": ("yes" if answers else "no") if box else "-",
            }
        )
    return rows


def _print_status(cfg: LabConfig, rows: list[dict[str, str]]) -> None:
    print(
        f"lab {cfg.name}: network {cfg.network} {cfg.subnet}, inventory {_display(cfg.hosts_file)}"
    )
    cols = [
        ("host", "HOST"),
        ("address", "ADDRESS"),
        ("group", "GROUP"),
        ("container", "CONTAINER"),
        ("state", "STATE"),
        ("service", "SSH/APT"),
    ]
    widths = {k: max(len(t), *(len(r[k]) for r in rows)) for k, t in cols}
    print("  ".join(t.ljust(widths[k]) for k, t in cols).rstrip())
    for row in rows:
        print("  ".join(row[k].ljust(widths[k]) for k, _ in cols).rstrip())


# --------------------------------------------------------------------------- CLI


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="python -m taskfleet.ops.lab",
        description="Simulated machines for taskfleet (env: TASKFLEET_LAB, TASKFLEET_LAB_SUBNET, "
        "TASKFLEET_LAB_INVENTORY, LAB_WORKERS, TASKFLEET_LAB_APT_CACHE).",
    )
    sub = parser.add_subparsers(dest="command", required=True)
    sub.add_parser("up", help="create or complete the lab, write the inventory")
    p_down = sub.add_parser("down", help="remove the lab's containers, volumes and network")
    p_down.add_argument("--purge", action="store_true", help="also remove the apt cache volume")
    p_status = sub.add_parser("status", help="show the lab's hosts and their state")
    p_status.add_argument("--json", action="store_true", help="print one JSON list")
    return parser


def main(argv: list[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    try:
        cfg = LabConfig.from_env()
        if args.command == "up":
            up(cfg)
        elif args.command == "down":
            down(cfg, purge=args.purge)
        else:
            rows = status(cfg)
            if args.json:
                print(json.dumps(rows))
            else:
                _print_status(cfg, rows)
    except LabError as exc:
        print(f"taskfleet: error: {exc}", file=sys.stderr)
        return 1
    except docker.errors.DockerException as exc:
        print(
            f"taskfleet: error: Docker: {str(exc).splitlines()[0][:200]} — "
            "check `docker info`, then run the command again",
            file=sys.stderr,
        )
        return 1
    except KeyboardInterrupt:
        print("taskfleet: error: interrupted — run the command again to finish", file=sys.stderr)
        return 130
    return 0


if __name__ == "__main__":
    sys.exit(main())


__all__: list[Any] = [
    "HostSpec",
    "LabConfig",
    "LabError",
    "LabInfo",
    "connect",
    "down",
    "main",
    "render_inventory",
    "render_known_hosts",
    "status",
    "up",
]

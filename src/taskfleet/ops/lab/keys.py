"""The lab's SSH keys, made on the control side: the deploy user's key and one host
key per machine, so known_hosts is exact before any host starts (no trust on first use)."""

from __future__ import annotations

import shutil
import subprocess
from pathlib import Path

from taskfleet.ops.errors import LabError
from taskfleet.ops.lab.config import DEPLOY_UID, DEPLOY_USER, LabConfig
from taskfleet.ops.lab.render import apt_proxy_conf

#: A file to put into a host: path → (content, mode, owner uid).
HostFiles = dict[str, tuple[bytes, int, int]]


def _keygen(path: Path, comment: str) -> None:
    """An unencrypted ed25519 key pair at ``path`` (kept when both halves exist)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    if path.exists() and path.with_suffix(".pub").exists():
        return
    path.unlink(missing_ok=True)
    path.with_suffix(".pub").unlink(missing_ok=True)
    if shutil.which("ssh-keygen") is None:
        raise LabError(
            "ssh-keygen not found", "install the OpenSSH client (apt-get install openssh-client)"
        )
    subprocess.run(
        ["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-C", comment, "-f", str(path)],
        check=True,
        capture_output=True,
    )


def host_key(cfg: LabConfig, host: str) -> Path:
    """The private host key of ``host`` on the control side (``.pub`` beside it)."""
    return cfg.state_dir / "hostkeys" / f"{host}_ed25519"


def ensure_keys(cfg: LabConfig) -> dict[str, str]:
    """Create the client key and every host key (kept across runs); return host → public key."""
    cfg.state_dir.mkdir(parents=True, exist_ok=True)
    cfg.state_dir.chmod(0o700)
    _keygen(cfg.key, f"{DEPLOY_USER}@taskfleet-lab-{cfg.name}")
    pubs = {}
    for spec in cfg.hosts():
        path = host_key(cfg, spec.name)
        _keygen(path, f"{spec.name}.{cfg.name}.taskfleet-lab")
        pubs[spec.name] = path.with_suffix(".pub").read_text().strip()
    return pubs


def host_files(cfg: LabConfig, host: str, with_proxy: bool) -> HostFiles:
    """What goes into ``host`` before sshd starts: its host key, the deploy user's
    authorized_keys and, with ``with_proxy``, the apt proxy setting."""
    key = host_key(cfg, host)
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

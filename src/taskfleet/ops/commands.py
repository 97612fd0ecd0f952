"""Pure builders of the commands the Fabric tasks run on the hosts.

Nothing here touches the network. :class:`HostCommands` binds the builders to
one host, so a caller reads ``c.stop(names)`` and never passes ``sudo`` along:
each method returns an argv list (or, for the few pipelines, one shell line)
for :func:`taskfleet.ops.ssh.run`, and is pinned by unit tests on the exact
text, the way Kamal's ``commands/`` are.

The authkey is only ever named by its path inside the master container
(``/run/secrets/taskfleet_authkey``): it never appears on a command line. With
TLS, the commands run in the master container pass its own TLS files
(``tls``: the ``--tls-*`` arguments of the master itself, paths only).
"""

from __future__ import annotations

import re
import shlex
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from taskfleet.ops.inventory import Host

LABEL_MANAGED = "io.taskfleet.managed=true"
LABEL_ROLE = "io.taskfleet.role"
LABEL_INVENTORY_HOST = "io.taskfleet.inventory_host"
MASTER_CONTAINER = "taskfleet-master"
WORKER_PREFIX = "taskfleet-worker-"
AUTHKEY_IN_CONTAINER = "/run/secrets/taskfleet_authkey"
AUTHKEY_ON_HOST = "/etc/taskfleet/authkey"
JOURNAL_DIR = "/var/lib/taskfleet"
#: Seconds a stopping worker gets to drain (finish or release its chunks) before SIGKILL.
STOP_TIMEOUT = 30

_WORKER_NAME = re.compile(rf"^{re.escape(WORKER_PREFIX)}(\d+)$")

#: What a builder returns: an argv list, or one line for the remote shell.
Command = str | Sequence[str]


def sh(command: Command) -> str:
    """One line for the remote shell: an argv list quoted, a shell line as it is."""
    return command if isinstance(command, str) else shlex.join(command)


def worker_name(index: int) -> str:
    return f"{WORKER_PREFIX}{index}"


def worker_index(name: str) -> int | None:
    """``taskfleet-worker-3`` → 3; anything else → None."""
    match = _WORKER_NAME.match(name.lstrip("/"))
    return int(match.group(1)) if match else None


@dataclass(frozen=True)
class HostCommands:
    """The commands for one host; through passwordless ``sudo -n`` unless its SSH user is root."""

    host: Host

    @property
    def _sudo(self) -> list[str]:
        return ["sudo", "-n"] if self.host.sudo else []

    def docker(self) -> list[str]:
        """The docker CLI as this host's SSH user may run it."""
        return [*self._sudo, "docker"]

    # --- reading state -------------------------------------------------------------------

    def inspect_managed(self) -> str:
        """Inspect JSON of every taskfleet container on the host (no container: no output).

        Not a pipe into xargs: a failing ``docker ps`` (no engine, no sudo) must fail the
        command, and POSIX sh has no pipefail.
        """
        d = sh(self.docker())
        return (
            f"ids=$({d} ps -aq --filter label={LABEL_MANAGED}) && "
            f'{{ [ -z "$ids" ] || {d} inspect $ids; }}'
        )

    def inspect(self, names: Sequence[str]) -> list[str]:
        return [*self.docker(), "inspect", *names]

    def inspect_image(self, image: str) -> list[str]:
        return [*self.docker(), "image", "inspect", image]

    def master_exec(self, args: Sequence[str]) -> list[str]:
        """Run the taskfleet CLI inside the master container (which holds the authkey file)."""
        return [*self.docker(), "exec", MASTER_CONTAINER, "taskfleet", *args]

    def master_status(self, master: str, tls: Sequence[str] = ()) -> list[str]:
        return self.master_exec(
            ["status", "--master", master, "--authkey-file", AUTHKEY_IN_CONTAINER, *tls, "--json"]
        )

    def smoke(
        self,
        master: str,
        count: int,
        hosts: Sequence[str],
        timeout: float,
        tls: Sequence[str] = (),
    ) -> list[str]:
        args = [
            "smoke",
            "--master",
            master,
            "--authkey-file",
            AUTHKEY_IN_CONTAINER,
            *tls,
            "--count",
            str(count),
        ]
        if hosts:
            args += ["--expect-hosts", ",".join(hosts)]
        args += ["--timeout", f"{timeout:g}", "--json"]
        return self.master_exec(args)

    def submit(
        self,
        master: str,
        job: str,
        count: int,
        chunk_size: int | None = None,
        wait: bool = False,
        tls: Sequence[str] = (),
    ) -> list[str]:
        args = [
            "submit",
            job,
            "--range",
            str(count),
            "--master",
            master,
            "--authkey-file",
            AUTHKEY_IN_CONTAINER,
            *tls,
        ]
        if chunk_size:
            args += ["--chunk-size", str(chunk_size)]
        if not wait:
            args.append("--no-wait")
        args.append("--json")
        return self.master_exec(args)

    def logs(
        self, names: Sequence[str], since: str | None, follow: bool, tail: int | None = None
    ) -> str:
        """One shell line that prints every named container's log, each line prefixed
        ``<container> | ``.

        With ``follow`` all streams run at once until our SSH session ends: the
        script then blocks reading its stdin (the SSH channel, never written to) and
        kills its whole process group when that read hits EOF, i.e. when the client
        is gone (Ctrl-C, killed, network lost). No pty is needed, and nothing is left
        running on the host. One ``sudo`` for the whole script, so it may kill what it
        started.
        """
        opts = ["--timestamps"]
        if since:
            opts += ["--since", since]
        if tail is not None:
            opts += ["--tail", str(tail)]
        if follow:
            opts.append("--follow")
        parts = []
        for name in names:
            # sed -u: unbuffered, so followed lines appear as they are written.
            prefix = name.replace("/", r"\/") + " | "
            parts.append(
                f"docker logs {sh(opts)} {shlex.quote(name)} 2>&1"
                f" | sed -u {shlex.quote('s/^/' + prefix + '/')}"
            )
        if not parts:
            return "true"
        if follow:
            script = " & ".join(parts) + " & read -r _eof; kill 0"
        else:
            script = "; ".join(parts)
        return sh([*self._sudo, "sh", "-c", script])

    # --- changing state ------------------------------------------------------------------

    def stop(self, names: Sequence[str], timeout: int = STOP_TIMEOUT) -> list[str]:
        """SIGTERM (the image's stop signal), then SIGKILL after ``timeout`` s; docker stops
        the named containers in parallel, so draining workers overlap."""
        return [*self.docker(), "stop", "-t", str(timeout), *names]

    def start(self, names: Sequence[str]) -> list[str]:
        return [*self.docker(), "start", *names]

    def remove(self, names: Sequence[str]) -> list[str]:
        return [*self.docker(), "rm", "-f", *names]

    def restart(self, names: Sequence[str], timeout: int = STOP_TIMEOUT) -> list[str]:
        return [*self.docker(), "restart", "-t", str(timeout), *names]

    def list_managed_volumes(self) -> list[str]:
        return [*self.docker(), "volume", "ls", "-q", "--filter", f"label={LABEL_MANAGED}"]

    def remove_volumes(self, names: Sequence[str]) -> list[str]:
        return [*self.docker(), "volume", "rm", *names]

    def remove_authkey(self) -> str:
        prefix = "sudo -n " if self.host.sudo else ""
        return (
            f"{prefix}rm -f {AUTHKEY_ON_HOST} && "
            f"{prefix}rmdir --ignore-fail-on-non-empty {AUTHKEY_ON_HOST.rsplit('/', 1)[0]}"
            " 2>/dev/null || true"
        )

    def clone_run(
        self, container: Mapping[str, Any], image: Mapping[str, Any], new_name: str
    ) -> list[str]:
        """``docker run -d`` argv that recreates ``container`` as ``new_name`` (see
        :func:`clone_args`)."""
        return [*self.docker(), *clone_args(container, image, new_name)]


def _ns_to_duration(ns: int) -> str:
    seconds = ns / 1e9
    return f"{seconds:g}s"


def _differs(container: Mapping[str, Any], image: Mapping[str, Any], key: str) -> bool:
    return container.get(key) != image.get(key)


def clone_args(container: Mapping[str, Any], image: Mapping[str, Any], new_name: str) -> list[str]:
    """``docker`` arguments (``run -d …``) that recreate ``container`` (docker inspect JSON) as
    ``new_name``: same image, command, mounts, network, restart policy, labels and
    limits, so a scaled-up worker is configured exactly like the deployed ones.

    ``image`` is the image's inspect JSON: settings the container merely inherits
    from its image (env, labels, user, healthcheck) are not repeated. Every
    occurrence of the old container name in the command and labels becomes the
    new name (the deploy names workers after their container).
    """
    old_name = str(container.get("Name", "")).lstrip("/")
    cfg: Mapping[str, Any] = container.get("Config") or {}
    img_cfg: Mapping[str, Any] = image.get("Config") or {}
    host: Mapping[str, Any] = container.get("HostConfig") or {}

    old_idx = worker_index(old_name)
    new_idx = worker_index(new_name)

    def rename(value: str, indexed: bool = False) -> str:
        value = value.replace(old_name, new_name) if old_name else value
        if indexed and old_idx is not None and new_idx is not None:
            # a worker named after its container index: worker1-1 → worker1-2
            value = re.sub(rf"(^|-){old_idx}$", rf"\g<1>{new_idx}", value)
        return value

    argv = ["run", "--detach", "--name", new_name]

    network = host.get("NetworkMode")
    if network and network != "default":
        argv += ["--network", network]
    restart_policy = host.get("RestartPolicy") or {}
    if restart_policy.get("Name") and restart_policy["Name"] != "no":
        policy = restart_policy["Name"]
        if policy == "on-failure" and restart_policy.get("MaximumRetryCount"):
            policy += f":{restart_policy['MaximumRetryCount']}"
        argv += ["--restart", policy]
    if host.get("Init"):
        argv.append("--init")
    if host.get("ReadonlyRootfs"):
        argv.append("--read-only")
    for bind in host.get("Binds") or []:
        argv += ["--volume", bind]
    for mount in host.get("Mounts") or []:
        spec = [f"type={mount.get('Type', 'volume')}"]
        if mount.get("Source"):
            spec.append(f"source={mount['Source']}")
        spec.append(f"target={mount['Target']}")
        if mount.get("ReadOnly"):
            spec.append("readonly")
        argv += ["--mount", ",".join(spec)]
    for path, opts in sorted((host.get("Tmpfs") or {}).items()):
        argv += ["--tmpfs", f"{path}:{opts}" if opts else path]
    for cap in host.get("CapAdd") or []:
        argv += ["--cap-add", cap]
    for cap in host.get("CapDrop") or []:
        argv += ["--cap-drop", cap]
    for opt in host.get("SecurityOpt") or []:
        argv += ["--security-opt", opt]
    for extra in host.get("ExtraHosts") or []:
        argv += ["--add-host", extra]
    log_config = host.get("LogConfig") or {}
    if log_config.get("Type") and log_config["Type"] != "json-file":
        argv += ["--log-driver", log_config["Type"]]
    for key, value in sorted((log_config.get("Config") or {}).items()):
        argv += ["--log-opt", f"{key}={value}"]
    if host.get("Memory"):
        argv += ["--memory", str(host["Memory"])]
    if host.get("NanoCpus"):
        argv += ["--cpus", f"{host['NanoCpus'] / 1e9:g}"]
    if host.get("PidsLimit"):
        argv += ["--pids-limit", str(host["PidsLimit"])]

    if cfg.get("User") and _differs(cfg, img_cfg, "User"):
        argv += ["--user", cfg["User"]]
    img_env = set(img_cfg.get("Env") or [])
    for item in cfg.get("Env") or []:
        if item not in img_env:
            argv += ["--env", rename(item)]
    img_labels = img_cfg.get("Labels") or {}
    for key, value in sorted((cfg.get("Labels") or {}).items()):
        # Our own labels always explicitly: they are what status/scale/down select by.
        if img_labels.get(key) != value or key.startswith("io.taskfleet."):
            argv += ["--label", f"{key}={rename(value, indexed=True)}"]
    if cfg.get("StopSignal") and _differs(cfg, img_cfg, "StopSignal"):
        argv += ["--stop-signal", cfg["StopSignal"]]
    if cfg.get("StopTimeout") is not None:
        argv += ["--stop-timeout", str(cfg["StopTimeout"])]
    health = cfg.get("Healthcheck")
    if health and _differs(cfg, img_cfg, "Healthcheck"):
        test = health.get("Test") or []
        if test[:1] == ["NONE"]:
            argv.append("--no-healthcheck")
        elif test:
            health_cmd = test[1] if test[0] == "CMD-SHELL" else sh(test[1:])
            argv += ["--health-cmd", health_cmd]
            for key, flag in (
                ("Interval", "--health-interval"),
                ("Timeout", "--health-timeout"),
                ("StartPeriod", "--health-start-period"),
            ):
                if health.get(key):
                    argv += [flag, _ns_to_duration(int(health[key]))]
            if health.get("Retries"):
                argv += ["--health-retries", str(health["Retries"])]
    entrypoint = cfg.get("Entrypoint")
    if entrypoint and entrypoint != img_cfg.get("Entrypoint"):
        argv += ["--entrypoint", entrypoint[0]]
        command = [*entrypoint[1:], *(cfg.get("Cmd") or [])]
    else:
        command = list(cfg.get("Cmd") or [])

    argv.append(str(cfg.get("Image") or container.get("Image")))
    for i, arg in enumerate(command):
        argv.append(rename(arg, indexed=i > 0 and command[i - 1] == "--name"))
    return argv

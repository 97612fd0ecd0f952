"""Exact text of the commands the Fabric tasks run on the hosts (pure builders)."""

from __future__ import annotations

import copy
import shlex
from typing import Any

from taskfleet.ops import commands as cmd
from taskfleet.ops.commands import HostCommands
from taskfleet.ops.inventory import Host

#: A host reached as a sudo user (every command through `sudo -n`) and one reached as root.
SUDO = HostCommands(Host("worker1", "192.0.2.11", "deploy"))
ROOT = HostCommands(Host("worker1", "192.0.2.11", "root"))


def test_docker_goes_through_passwordless_sudo_unless_root() -> None:
    assert SUDO.docker() == ["sudo", "-n", "docker"]
    assert ROOT.docker() == ["docker"]


def test_inspect_managed_lists_only_labelled_containers() -> None:
    assert SUDO.inspect_managed() == (
        "ids=$(sudo -n docker ps -aq --filter label=io.taskfleet.managed=true)"
        ' && { [ -z "$ids" ] || sudo -n docker inspect $ids; }'
    )


def test_master_status_names_the_authkey_by_its_path_in_the_container() -> None:
    assert cmd.sh(SUDO.master_status("172.28.40.10:7451")) == (
        "sudo -n docker exec taskfleet-master taskfleet status --master 172.28.40.10:7451"
        " --authkey-file /run/secrets/taskfleet_authkey --json"
    )


TLS = [
    "--tls-ca",
    "/run/secrets/taskfleet_tls/ca.crt",
    "--tls-cert",
    "/run/secrets/taskfleet_tls/host.crt",
    "--tls-key",
    "/run/secrets/taskfleet_tls/host.key",
]


def test_with_tls_the_commands_pass_the_master_containers_own_files() -> None:
    files = (
        " --tls-ca /run/secrets/taskfleet_tls/ca.crt --tls-cert /run/secrets/taskfleet_tls/host.crt"
        " --tls-key /run/secrets/taskfleet_tls/host.key"
    )
    assert cmd.sh(ROOT.master_status("10.0.0.1:7451", TLS)) == (
        "docker exec taskfleet-master taskfleet status --master 10.0.0.1:7451"
        f" --authkey-file /run/secrets/taskfleet_authkey{files} --json"
    )
    assert cmd.sh(ROOT.smoke("10.0.0.1:7451", 50, [], 9, TLS)) == (
        "docker exec taskfleet-master taskfleet smoke --master 10.0.0.1:7451"
        f" --authkey-file /run/secrets/taskfleet_authkey{files} --count 50 --timeout 9 --json"
    )
    assert cmd.sh(ROOT.submit("10.0.0.1:7451", "squares", 7, tls=TLS)) == (
        "docker exec taskfleet-master taskfleet submit squares --range 7 --master 10.0.0.1:7451"
        f" --authkey-file /run/secrets/taskfleet_authkey{files} --no-wait --json"
    )


def test_smoke_expects_every_worker_host() -> None:
    assert cmd.sh(ROOT.smoke("10.0.0.1:7451", 5000, ["w1", "w2"], 120)) == (
        "docker exec taskfleet-master taskfleet smoke --master 10.0.0.1:7451"
        " --authkey-file /run/secrets/taskfleet_authkey --count 5000 --expect-hosts w1,w2"
        " --timeout 120 --json"
    )


def test_submit_without_waiting() -> None:
    assert cmd.sh(SUDO.submit("10.0.0.1:7451", "squares", 200000, chunk_size=500)) == (
        "sudo -n docker exec taskfleet-master taskfleet submit squares --range 200000"
        " --master 10.0.0.1:7451 --authkey-file /run/secrets/taskfleet_authkey"
        " --chunk-size 500 --no-wait --json"
    )


def test_logs_prefix_each_line_with_its_container() -> None:
    assert SUDO.logs(["taskfleet-master", "taskfleet-worker-1"], "10m", False) == (
        "sudo -n sh -c 'docker logs --timestamps --since 10m taskfleet-master 2>&1"
        " | sed -u '\"'\"'s/^/taskfleet-master | /'\"'\"'; "
        "docker logs --timestamps --since 10m taskfleet-worker-1 2>&1"
        " | sed -u '\"'\"'s/^/taskfleet-worker-1 | /'\"'\"''"
    )


def test_followed_logs_run_at_once_and_die_with_the_ssh_session() -> None:
    line = ROOT.logs(["a", "b"], None, True, tail=5)
    assert shlex.split(line) == [
        "sh",
        "-c",
        "docker logs --timestamps --tail 5 --follow a 2>&1 | sed -u 's/^/a | /' & "
        "docker logs --timestamps --tail 5 --follow b 2>&1 | sed -u 's/^/b | /' & "
        "read -r _eof; kill 0",
    ]


def test_logs_quote_a_hostile_since_value() -> None:
    assert shlex.split(ROOT.logs(["a"], "1m; rm -rf /", False)) == [
        "sh",
        "-c",
        "docker logs --timestamps --since '1m; rm -rf /' a 2>&1 | sed -u 's/^/a | /'",
    ]


def test_logs_of_no_container_is_a_no_op() -> None:
    assert SUDO.logs([], None, True) == "true"


def test_stop_gives_workers_thirty_seconds_to_drain() -> None:
    assert SUDO.stop(["taskfleet-worker-3", "taskfleet-worker-2"]) == [
        "sudo",
        "-n",
        "docker",
        "stop",
        "-t",
        "30",
        "taskfleet-worker-3",
        "taskfleet-worker-2",
    ]
    assert ROOT.restart(["taskfleet-master"]) == [
        "docker",
        "restart",
        "-t",
        "30",
        "taskfleet-master",
    ]


def test_scale_starts_stopped_workers_by_name() -> None:
    assert cmd.sh(SUDO.start(["taskfleet-worker-2", "taskfleet-worker-3"])) == (
        "sudo -n docker start taskfleet-worker-2 taskfleet-worker-3"
    )


def test_purge_removes_the_authkey_and_its_empty_directory() -> None:
    assert SUDO.remove_authkey() == (
        "sudo -n rm -f /etc/taskfleet/authkey && "
        "sudo -n rmdir --ignore-fail-on-non-empty /etc/taskfleet 2>/dev/null || true"
    )
    assert cmd.sh(ROOT.list_managed_volumes()) == (
        "docker volume ls -q --filter label=io.taskfleet.managed=true"
    )


def test_worker_names_and_indexes() -> None:
    assert cmd.worker_name(4) == "taskfleet-worker-4"
    assert cmd.worker_index("/taskfleet-worker-12") == 12
    assert cmd.worker_index("taskfleet-master") is None
    assert cmd.worker_index("taskfleet-worker-x") is None


IMAGE: dict[str, Any] = {
    "Config": {
        "User": "taskfleet",
        "Env": ["PATH=/usr/local/bin:/usr/bin:/bin"],
        "Entrypoint": ["/usr/bin/tini", "--", "taskfleet"],
        "Labels": {
            "org.opencontainers.image.title": "taskfleet-worker",
            "io.taskfleet.managed": "true",
            "io.taskfleet.role": "worker",
        },
        "Healthcheck": {
            "Test": [
                "CMD",
                "taskfleet",
                "healthcheck",
                "worker",
                "--heartbeat-file",
                "/tmp/taskfleet/heartbeat",
            ],
            "Interval": 5_000_000_000,
        },
        "StopSignal": "SIGTERM",
    }
}

WORKER: dict[str, Any] = {
    "Name": "/taskfleet-worker-1",
    "Config": {
        "Image": "taskfleet-worker:0123abcd",
        "User": "taskfleet",
        "Env": ["PATH=/usr/local/bin:/usr/bin:/bin", "TASKFLEET_LOG=info"],
        "Entrypoint": ["/usr/bin/tini", "--", "taskfleet"],
        "Cmd": [
            "worker",
            "--master",
            "172.28.40.10:7451",
            "--authkey-file",
            "/run/secrets/taskfleet_authkey",
            "--host-label",
            "worker1",
            "--name",
            "worker1-1",
        ],
        "Labels": {
            "org.opencontainers.image.title": "taskfleet-worker",
            "io.taskfleet.managed": "true",
            "io.taskfleet.role": "worker",
            "io.taskfleet.inventory_host": "worker1",
            "io.taskfleet.worker_index": "1",
        },
        "Healthcheck": IMAGE["Config"]["Healthcheck"],
        "StopSignal": "SIGTERM",
    },
    "HostConfig": {
        "NetworkMode": "host",
        "RestartPolicy": {"Name": "unless-stopped", "MaximumRetryCount": 0},
        "Init": False,
        "Binds": ["/etc/taskfleet/authkey:/run/secrets/taskfleet_authkey:ro"],
        "Mounts": None,
        "CapDrop": ["ALL"],
        "SecurityOpt": ["no-new-privileges"],
        "LogConfig": {"Type": "json-file", "Config": {"max-size": "10m"}},
        "Memory": 0,
        "NanoCpus": 0,
    },
}


def test_clone_copies_the_deployed_worker_under_a_new_name() -> None:
    assert SUDO.clone_run(WORKER, IMAGE, "taskfleet-worker-3") == [
        "sudo",
        "-n",
        "docker",
        "run",
        "--detach",
        "--name",
        "taskfleet-worker-3",
        "--network",
        "host",
        "--restart",
        "unless-stopped",
        "--volume",
        "/etc/taskfleet/authkey:/run/secrets/taskfleet_authkey:ro",
        "--cap-drop",
        "ALL",
        "--security-opt",
        "no-new-privileges",
        "--log-opt",
        "max-size=10m",
        "--env",
        "TASKFLEET_LOG=info",
        "--label",
        "io.taskfleet.inventory_host=worker1",
        "--label",
        "io.taskfleet.managed=true",
        "--label",
        "io.taskfleet.role=worker",
        "--label",
        "io.taskfleet.worker_index=3",
        "taskfleet-worker:0123abcd",
        "worker",
        "--master",
        "172.28.40.10:7451",
        "--authkey-file",
        "/run/secrets/taskfleet_authkey",
        "--host-label",
        "worker1",
        "--name",
        "worker1-3",
    ]


def test_clone_repeats_settings_that_differ_from_the_image() -> None:
    worker = copy.deepcopy(WORKER)
    worker["Config"]["User"] = "10001:10001"
    worker["Config"]["Healthcheck"] = {
        "Test": ["CMD-SHELL", "test -f /tmp/ok"],
        "Interval": 2_000_000_000,
        "Retries": 3,
    }
    worker["HostConfig"].update(
        Init=True,
        ReadonlyRootfs=True,
        NanoCpus=1_500_000_000,
        RestartPolicy={"Name": "on-failure", "MaximumRetryCount": 5},
        Mounts=[{"Type": "volume", "Source": "tf-cache", "Target": "/cache", "ReadOnly": True}],
        Tmpfs={"/tmp/taskfleet": "size=1m"},
    )
    argv = ROOT.clone_run(worker, IMAGE, "taskfleet-worker-2")
    text = cmd.sh(argv)
    for part in (
        "--restart on-failure:5",
        "--init",
        "--read-only",
        "--mount type=volume,source=tf-cache,target=/cache,readonly",
        "--tmpfs /tmp/taskfleet:size=1m",
        "--cpus 1.5",
        "--user 10001:10001",
        "--health-cmd 'test -f /tmp/ok' --health-interval 2s --health-retries 3",
    ):
        assert part in text

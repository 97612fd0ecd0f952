"""Your own jobs on the lab: `make deploy JOBS=examples/primes`, then `primes` from the
control node through the profile the deploy wrote.

The deploy builds the images with the example package on the control node and
ships them; the control node (this machine, the lab network's gateway) is
admitted by the lab's firewall, so the Python API and the CLI reach the master
with nothing but ``inventory/<lab>/secrets/client.json``. Every worker host
must take part in counting the primes below a million (78,498); every worker
reports the package's version, and a job records it. A second
deploy with the same packages, from the command line or from the inventory,
changes nothing. Runs after test_30 (whose last test stops the cluster):
the first deploy here brings it back, so the file also runs alone.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import time
from collections import Counter
from collections.abc import Iterator
from pathlib import Path

import pytest

import taskfleet
from tests.e2e.conftest import Lab
from tests.e2e.test_20_deploy import PORT, Run, connect_from, playbook, run_deploy, sh

pytestmark = pytest.mark.timeout(1800)

REPO = Path(__file__).resolve().parents[2]
BIN = Path(sys.executable).parent
JOBS = "examples/primes"
PACKAGES = {"taskfleet-primes": "1.0.0"}
PRIMES_BELOW_A_MILLION = 78_498


def make_deploy(*args: str) -> Run:
    """`make deploy` for the session's lab (its TASKFLEET_LAB* settings are in the env)."""
    return run_deploy(["make", "deploy", *args])


def client_json(lab: Lab) -> Path:
    return lab.inventory_dir / "secrets" / "client.json"


@pytest.fixture(scope="module")
def deployed(lab: Lab) -> Iterator[Run]:
    """The cluster deployed by `make deploy JOBS=examples/primes` (images built on the way)."""
    run = make_deploy(f"JOBS={JOBS}")
    print(f"[jobs] make deploy JOBS={JOBS}: {run.seconds:.1f} s")
    if run.rc != 0:
        pytest.fail(f"make deploy JOBS={JOBS} failed (exit {run.rc}):\n{run.tail()}", pytrace=False)
    yield run


def test_make_deploy_with_jobs_ships_images_carrying_the_package_to_every_host(
    lab: Lab, deployed: Run
) -> None:
    manifest = json.loads((REPO / ".build" / "images.json").read_text())
    assert manifest["jobs"] == PACKAGES
    assert f"{manifest['master']}: taskfleet-primes 1.0.0" in deployed.out, deployed.tail()
    assert "taskfleet smoke: OK" in deployed.out, deployed.tail()
    label = '{{index .Config.Labels "io.taskfleet.job-packages"}}'
    for host, container in [("master", "taskfleet-master")] + [
        (w, "taskfleet-worker-1") for w in lab.workers
    ]:
        image = sh(lab, host, f"sudo docker inspect -f '{{{{.Config.Image}}}}' {container}")
        assert image.stdout.strip() == manifest["master" if host == "master" else "worker"], host
        labels = sh(lab, host, f"sudo docker image inspect -f '{label}' {image.stdout.strip()}")
        assert labels.stdout.strip() == "taskfleet-primes==1.0.0", (host, labels)


def test_the_deploy_writes_the_control_nodes_profile_0600_and_git_ignored(
    lab: Lab, deployed: Run
) -> None:
    path = client_json(lab)
    assert path.stat().st_mode & 0o777 == 0o600
    assert path.parent.stat().st_mode & 0o777 == 0o700
    assert json.loads(path.read_text()) == {
        "master": f"{lab.hosts['master']}:{PORT}",
        "authkey_file": "authkey",
    }
    for profile_path in (path, REPO / "inventory" / "local" / "secrets" / "client.json"):
        ignored = subprocess.run(
            ["git", "check-ignore", "-q", str(profile_path)], cwd=REPO, check=False
        )
        assert ignored.returncode == 0, f"{profile_path} is not git-ignored"


def test_primes_over_a_million_from_the_control_node_through_the_profile(
    lab: Lab, deployed: Run
) -> None:
    # The Python API with nothing but the profile the deploy wrote.
    with taskfleet.connect(profile=str(client_json(lab))) as client:
        assert client.where == f"{lab.hosts['master']}:{PORT}"
        started = time.monotonic()
        job = client.submit("primes", range(10**6), chunk_size=5_000)
        seen: Counter[int] = Counter()
        hosts: Counter[str] = Counter()
        primes = 0
        for chunk in job.chunks(ordered=False, timeout=600):
            seen.update(chunk.items)
            hosts[chunk.host] += len(chunk.items)
            primes += sum(chunk.results)
        seconds = time.monotonic() - started
        assert job.state == "done"
    print(f"[jobs] primes over range(10**6) from the control node: {seconds:.1f} s, {hosts}")
    assert primes == PRIMES_BELOW_A_MILLION
    assert len(seen) == 10**6 and set(seen.values()) == {1}
    assert sorted(hosts) == sorted(lab.workers), hosts


def test_every_worker_reports_the_package_and_a_job_records_the_code_it_ran(
    lab: Lab, deployed: Run
) -> None:
    with taskfleet.connect(profile=str(client_json(lab))) as client:
        workers = client.status()["workers"]
        assert sorted({w["host"] for w in workers}) == sorted(lab.workers), workers
        assert [w["job_packages"] for w in workers] == [PACKAGES] * len(workers), workers
        job = client.submit("primes", range(100))
        assert job.wait(timeout=120) == "done"
        assert job.info()["code_version"] == "taskfleet-primes 1.0.0"
        assert job.spec.code_version == "taskfleet-primes 1.0.0"


def test_the_cli_submits_primes_with_only_the_profile(lab: Lab, deployed: Run) -> None:
    env = {k: v for k, v in os.environ.items() if not k.startswith("TASKFLEET_")}
    submit = ["submit", "primes", "--range", "1000", "--json", "--profile", str(client_json(lab))]
    proc = subprocess.run(
        [str(BIN / "taskfleet"), *submit],
        capture_output=True,
        text=True,
        timeout=120,
        env=env,
        check=False,
    )
    assert proc.returncode == 0, proc.stderr
    lines = [json.loads(line) for line in proc.stdout.splitlines()]
    chunks, summary = lines[:-1], lines[-1]
    assert summary["state"] == "done" and summary["results"] == 1000, summary
    assert sum(sum(c["results"]) for c in chunks) == 168  # primes below 1,000


def test_the_outsider_still_cannot_reach_the_master(lab: Lab, deployed: Run) -> None:
    outsider = connect_from(lab, "outsider")
    assert outsider.returncode == 1 and "connected" not in outsider.stdout, outsider


def test_a_second_deploy_with_the_same_jobs_changes_nothing(lab: Lab, deployed: Run) -> None:
    run = make_deploy(f"JOBS={JOBS}")
    print(f"[jobs] unchanged make deploy JOBS={JOBS}: {run.seconds:.1f} s")
    assert run.rc == 0, run.tail()
    recap = run.recap()
    assert set(recap) == {"master", *lab.workers}, recap
    assert all(r["changed"] == 0 and r["failed"] == 0 for r in recap.values()), (
        recap,
        run.changed_tasks(),
    )


def test_job_packages_from_the_inventory_deploy_the_same_images(
    lab: Lab, deployed: Run, tmp_path: Path
) -> None:
    # The lab's inventory plus taskfleet_job_packages in group_vars, same key and profile.
    inventory = tmp_path / "inventory"
    (inventory / "group_vars" / "all").mkdir(parents=True)
    shutil.copy(lab.inventory_dir / "hosts.yml", inventory / "hosts.yml")
    shutil.copy(
        lab.inventory_dir / "group_vars" / "all.yml", inventory / "group_vars" / "all" / "lab.yml"
    )
    (inventory / "group_vars" / "all" / "jobs.yml").write_text(
        f"taskfleet_job_packages:\n  - {JOBS}\n"
    )
    (inventory / "secrets").symlink_to((lab.inventory_dir / "secrets").resolve())
    run = playbook(inventory, "site.yml")
    assert run.rc == 0, run.tail()
    assert "taskfleet-primes 1.0.0" in run.out, run.tail()
    assert all(r["changed"] == 0 for r in run.recap().values()), run.changed_tasks()

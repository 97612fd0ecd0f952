"""Job packages in the images (`make images JOBS=…`): entry points, tags, labels, numpy, errors.

Builds through the same code as `make images` with ``jobs``: once with
``examples/primes``, once with a test package that needs numpy (a compiled
dependency from the package index, installed offline from its manylinux
wheel). The images these tests create are removed at the end; the plain
images and .build/images.json are left as the other container tests expect.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import docker
import pytest

from taskfleet.ops import images as images_mod
from tests.containers.test_images import run_once

REPO = images_mod.REPO
PRIMES = REPO / "examples" / "primes"
NUMPYJOB = Path(__file__).resolve().parent / "jobpkgs" / "numpyjob"
LABELS = {"io.taskfleet.managed": "true", "io.taskfleet.test": "containers-jobs"}
BASE = os.environ.get("BASE_IMAGE") or None


def tags(client: docker.DockerClient) -> set[str]:
    return {
        t
        for repo in ("taskfleet-master", "taskfleet-worker")
        for i in client.images.list(name=repo)
        for t in i.tags
    }


@pytest.fixture(scope="module")
def made(
    docker_client: docker.DockerClient, built_images: images_mod.ImageSet
) -> Iterator[dict[str, images_mod.ImageSet]]:
    """The job images built here (by name), removed afterwards unless they were there before."""
    before = tags(docker_client)
    builds: dict[str, images_mod.ImageSet] = {}
    yield builds
    for images in builds.values():
        for name in (images.master, images.worker):
            if name not in before:
                docker_client.images.remove(name)
    images_mod.write_images_json(built_images)  # the other container tests read it


def build(
    client: docker.DockerClient, jobs: list[Path], lines: list[str] | None = None
) -> images_mod.ImageSet:
    log = lines.append if lines is not None else images_mod._log
    return images_mod.build_images(BASE, client=client, log=log, jobs=[str(j) for j in jobs])


@pytest.fixture(scope="module")
def primes_images(
    docker_client: docker.DockerClient, made: dict[str, images_mod.ImageSet]
) -> images_mod.ImageSet:
    made["primes"] = build(docker_client, [PRIMES])
    return made["primes"]


@pytest.fixture(scope="module")
def numpy_images(
    docker_client: docker.DockerClient, made: dict[str, images_mod.ImageSet]
) -> images_mod.ImageSet:
    made["numpy"] = build(docker_client, [NUMPYJOB])
    return made["numpy"]


PROBE = (
    "import json, importlib.metadata as md; from taskfleet import jobs; "
    "print(json.dumps({'names': jobs.entry_point_names(), "
    "'primes': [jobs.resolve('primes')(n) for n in (1, 2, 9, 97)], "
    "'version': md.version('taskfleet-primes')}))"
)


@pytest.mark.parametrize("role", ["master", "worker"])
def test_jobs_examples_primes_puts_the_primes_entry_point_into_master_and_worker(
    docker_client: docker.DockerClient,
    built_images: images_mod.ImageSet,
    primes_images: images_mod.ImageSet,
    role: str,
) -> None:
    assert primes_images.tag != built_images.tag
    assert primes_images.jobs == {"taskfleet-primes": "1.0.0"}
    assert built_images.jobs == {}
    out = run_once(
        docker_client,
        getattr(primes_images, role),
        ["python3", "-c", PROBE],
        entrypoint=[],
        labels=LABELS,
    )
    assert json.loads(out.splitlines()[-1]) == {
        "names": ["primes"],
        "primes": [False, True, False, True],
        "version": "1.0.0",
    }
    labels = docker_client.images.get(getattr(primes_images, role)).attrs["Config"]["Labels"]
    assert labels["io.taskfleet.job-packages"] == "taskfleet-primes==1.0.0"
    assert labels["io.taskfleet.job-dependencies"] == ""
    plain = docker_client.images.get(getattr(built_images, role)).attrs["Config"]["Labels"]
    assert plain["io.taskfleet.job-packages"] == ""


def test_unchanged_job_packages_rebuild_nothing_and_images_json_lists_them(
    docker_client: docker.DockerClient, primes_images: images_mod.ImageSet
) -> None:
    ids = [docker_client.images.get(n).id for n in (primes_images.master, primes_images.worker)]
    lines: list[str] = []
    again = build(docker_client, [PRIMES], lines)
    assert again == primes_images
    assert [docker_client.images.get(n).id for n in (again.master, again.worker)] == ids
    assert any("job packages: reusing .build/jobs/" in ln for ln in lines), lines
    assert any("nothing to do" in ln and again.master in ln for ln in lines), lines
    assert "   job packages: taskfleet-primes 1.0.0" in lines, lines
    assert not any("docker build" in ln or "pip wheel" in ln for ln in lines), lines
    data = json.loads((REPO / ".build" / "images.json").read_text())
    assert data["tag"] == primes_images.tag and data["jobs"] == {"taskfleet-primes": "1.0.0"}


# The job by name, as a worker's pool process resolves and calls it.
RUN_NORM = (
    "import json, numpy; from taskfleet import jobs; fn = jobs.resolve('vector_norm'); "
    "print(json.dumps({'numpy': numpy.__version__, 'results': [fn(n) for n in range(5)]}))"
)


def test_a_job_package_needing_numpy_runs_its_job_in_the_worker_image(
    docker_client: docker.DockerClient, numpy_images: images_mod.ImageSet
) -> None:
    labels = docker_client.images.get(numpy_images.worker).attrs["Config"]["Labels"]
    assert labels["io.taskfleet.job-packages"] == "tfjob-numpy==0.1.0"
    deps = labels["io.taskfleet.job-dependencies"]
    assert deps.startswith("numpy==") and "," not in deps, deps
    # The worker's own user, as a deployed worker runs the job.
    out = run_once(
        docker_client,
        numpy_images.worker,
        ["python3", "-c", RUN_NORM],
        entrypoint=[],
        labels=LABELS,
    )
    facts = json.loads(out.splitlines()[-1])
    assert facts["numpy"] == deps.removeprefix("numpy==")
    expected = [sum(i * i for i in range(n)) ** 0.5 for n in range(5)]
    assert facts["results"] == pytest.approx(expected)


def _project(root: Path, pyproject: str) -> Path:
    (root / "src" / root.name).mkdir(parents=True)
    (root / "src" / root.name / "__init__.py").write_text("def job(n):\n    return n\n")
    if pyproject:
        (root / "pyproject.toml").write_text(pyproject)
    return root


BROKEN_BACKEND = """\
[build-system]
requires = []
build-backend = "broken_backend"
backend-path = ["."]
[project]
name = "brokenjob"
version = "0.1"
"""

NO_WHEEL_DEP = """\
[build-system]
requires = ["setuptools>=77"]
build-backend = "setuptools.build_meta"
[project]
name = "nowheeljob"
version = "0.1"
dependencies = ["docopt"]
"""


@pytest.mark.parametrize(
    ("name", "pyproject", "message"),
    [
        ("nopyproject", "", "job package {path}: no pyproject.toml in {path} — give the project's"),
        (
            "brokenjob",
            BROKEN_BACKEND,
            "job package {path}: building its wheel failed (compiler not found: gcc) — see "
            ".build/jobs/pip-wheel-brokenjob.log",
        ),
        (
            # docopt has never shipped a wheel: only its source is on the index.
            "nowheeljob",
            NO_WHEEL_DEP,
            "job package {path}: its dependency docopt has no wheel for the images' CPython 3.",
        ),
    ],
)
def test_a_bad_job_package_stops_make_images_in_one_line_and_tags_nothing(
    docker_client: docker.DockerClient,
    built_images: images_mod.ImageSet,
    tmp_path: Path,
    name: str,
    pyproject: str,
    message: str,
) -> None:
    path = _project(tmp_path / name, pyproject)
    (path / "broken_backend.py").write_text(
        "def get_requires_for_build_wheel(config_settings=None):\n"
        "    raise SystemExit('compiler not found: gcc')\n"
    )
    before = tags(docker_client)
    manifest = (REPO / ".build" / "images.json").read_text()
    proc = subprocess.run(
        [sys.executable, "-m", "taskfleet.ops.images", "build", "--job", str(path)],
        capture_output=True,
        text=True,
        timeout=600,
        cwd=REPO,
        env={**os.environ, **({"BASE_IMAGE": BASE} if BASE else {})},
        check=False,
    )
    assert proc.returncode == 1, proc.stderr[-2000:]
    assert proc.stdout == ""
    errors = [ln for ln in proc.stderr.splitlines() if "error" in ln.lower()]
    assert errors == [proc.stderr.splitlines()[-1]], proc.stderr[-2000:]
    assert errors[0].startswith("taskfleet: error: " + message.format(path=path)), errors[0]
    assert "Traceback" not in proc.stderr
    assert tags(docker_client) == before
    assert (REPO / ".build" / "images.json").read_text() == manifest

"""Build the taskfleet container images without a registry.

``python -m taskfleet.ops.images base``
    Build (or reuse) ``taskfleet-base:<hash>``: Debian trixie from Debian's
    archive with debootstrap, trimmed, ``docker import``-ed. The hash covers
    every input (recipe script, package list, suite, mirror, import changes);
    the rootfs tarball is cached under ``.build/base/`` by the same hash, so a
    clean engine re-imports without running debootstrap again.
``python -m taskfleet.ops.images build [--base-image IMAGE] [--job PATH ...]``
    Build (or reuse) ``taskfleet-master:<TAG>`` and ``taskfleet-worker:<TAG>``
    from a wheel made on the host, plus the job packages (``--job``: project
    folders or wheels, with their dependencies; see :mod:`taskfleet.ops.jobpkgs`).
    TAG is a hash of what goes into the image (the staged runtime source, the
    Dockerfile and its helper, the base image ID, every job wheel's contents),
    so unchanged code gives the same tag and the build is skipped.
    Writes ``.build/images.json`` (docs/interfaces.md).
``python -m taskfleet.ops.images save [--base-image IMAGE] [--job PATH ...]``
    Build as above, then ``docker save`` both images once into
    ``.build/taskfleet-images-<TAG>.tar`` (reused while the tag is unchanged).

Progress goes to stderr; the result (image names, tarball path) to stdout.
Every failure is one line, ``taskfleet: error: <what> — <what to do>``.
"""

from __future__ import annotations

import argparse
import contextlib
import datetime as dt
import hashlib
import json
import os
import shutil
import subprocess
import sys
import time
from collections.abc import Iterator, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import docker
import docker.errors

from taskfleet.ops import engine, jobpkgs
from taskfleet.ops.engine import HASH_LEN, REPO, Log, image_id
from taskfleet.ops.errors import ImagesError, run_cli

BUILD_DIR = REPO / ".build"
BASE_DIR = REPO / "images" / "base"
IMAGE_DIR = REPO / "images" / "taskfleet"

BASE_REPO = "taskfleet-base"
MASTER_REPO = "taskfleet-master"
WORKER_REPO = "taskfleet-worker"
SUITE = "trixie"  # Python 3.13: the authkey handshake uses HMAC-SHA256
DEFAULT_MIRROR = "http://deb.debian.org/debian"
# Applied by `docker import`; part of the base hash because they shape the image.
BASE_IMPORT_CHANGES = (
    "ENV PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin",
    "ENV LANG=C.UTF-8",
    "LABEL io.taskfleet.managed=true io.taskfleet.role=base",
    'CMD ["/usr/bin/python3"]',
)
# Files of the runtime that never go into an image: control-node tooling needs
# third-party packages (docker, fabric) and would change the tag on every ops edit.
RUNTIME_EXCLUDES = ("ops",)


def _log(msg: str) -> None:
    print(msg, file=sys.stderr, flush=True)


def _build_lock(log: Log) -> contextlib.AbstractContextManager[None]:
    """Serialise builds on this machine (``make images`` beside a test fixture, say).

    The second build waits, then finds the tags made by the first and skips.
    Re-entrant: build_images holds it while calling build_base.
    """
    return engine.file_lock(
        BUILD_DIR / ".images.lock",
        "==> another image build runs on this machine — waiting for it",
        log,
    )


@dataclass(frozen=True)
class ImageSet:
    """The names ``make images`` produced; serialised as .build/images.json.

    ``jobs`` maps each job package in the images to its version (empty
    without JOBS).
    """

    tag: str
    master: str
    worker: str
    base: str
    jobs: dict[str, str] = field(default_factory=dict)


def connect() -> docker.DockerClient:
    """A client for the local engine, or ImagesError saying how to start it."""
    return engine.connect(ImagesError)


# --------------------------------------------------------------------------- base


def _read_packages() -> list[str]:
    lines = (BASE_DIR / "packages").read_text().splitlines()
    return sorted({ln.split("#", 1)[0].strip() for ln in lines} - {""})


def base_hash(mirror: str = DEFAULT_MIRROR) -> str:
    """Hash of every input of the base image: recipe, package list, suite, mirror."""
    h = hashlib.sha256()
    h.update((BASE_DIR / "build.sh").read_bytes())
    for part in (",".join(_read_packages()), SUITE, mirror, *BASE_IMPORT_CHANGES):
        h.update(b"\0" + part.encode())
    return h.hexdigest()[:HASH_LEN]


def _find_debootstrap() -> str | None:
    # /usr/sbin is not on PATH for every user; look there too.
    return shutil.which("debootstrap") or shutil.which(
        "debootstrap", path="/usr/sbin:/sbin:/usr/local/sbin"
    )


def _check_debootstrap() -> None:
    """Raise ImagesError naming the fix when debootstrap cannot run here."""
    if _find_debootstrap() is None:
        raise ImagesError(
            "debootstrap is not installed",
            "apt-get install debootstrap, "
            "or use a base image you have: make images BASE_IMAGE=python:3.13-slim",
        )
    if os.geteuid() != 0:
        raise ImagesError(
            "debootstrap needs root",
            "run make base-image as root, "
            "or use a base image you have: make images BASE_IMAGE=python:3.13-slim",
        )


# debootstrap's "I: <Verb> ..." lines, folded into three stages printed once each.
_STAGES = {
    "Retrieving": ("downloading", 0),
    "Validating": ("downloading", 0),
    "Extracting": ("extracting", 1),
    "Installing": ("installing", 2),
    "Unpacking": ("installing", 2),
    "Configuring": ("installing", 2),
}
# The verb counted per stage (one line per package).
_COUNTED = {"Retrieving", "Extracting", "Unpacking"}


def _run_debootstrap(tarball: Path, mirror: str, logfile: Path, log: Log) -> None:
    """Run images/base/build.sh, keep its full output in ``logfile``, print one line per phase."""
    env = {
        **os.environ,
        "SUITE": SUITE,
        "MIRROR": mirror,
        "PACKAGES": ",".join(_read_packages()),
        "PATH": os.environ.get("PATH", "") + ":/usr/sbin:/sbin",
        "TMPDIR": str(BUILD_DIR / "base"),
    }
    started = time.monotonic()
    stage, index, count = "", -1, 0

    def close_stage() -> None:
        nonlocal stage
        if stage:
            log(f"   debootstrap: {stage} done ({count} packages)")
        stage = ""

    with logfile.open("w") as out:
        proc = subprocess.Popen(
            ["bash", str(BASE_DIR / "build.sh"), str(tarball)],
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            text=True,
            env=env,
        )
        assert proc.stdout is not None
        for line in proc.stdout:
            out.write(line)
            text = line.rstrip()
            if text.startswith("==>"):
                close_stage()
                log(f"   {text[4:]}")
            elif text.startswith("I: "):
                verb = text[3:].split(" ", 1)[0]
                name, order = _STAGES.get(verb, ("", -1))
                if order > index:
                    close_stage()
                    stage, index, count = name, order, 0
                    log(f"   debootstrap: {stage} ...")
                count += verb in _COUNTED and order == index
        rc = proc.wait()
    close_stage()
    if rc != 0:
        last = logfile.read_text().strip().splitlines()[-1:] or ["no output"]
        raise ImagesError(
            f"building the base rootfs failed (exit {rc}: {last[0][:160]})",
            f"see {logfile.relative_to(REPO)}; check that {mirror} is reachable",
        )
    log(f"   rootfs built in {time.monotonic() - started:.0f} s")


def build_base(
    client: docker.DockerClient | None = None,
    mirror: str | None = None,
    log: Log = _log,
) -> str:
    """Build or reuse ``taskfleet-base:<hash>`` and return its name.

    Skips everything when the tag exists; re-imports the cached rootfs tarball
    when only the engine lost the image; runs debootstrap otherwise.
    Raises ImagesError on any failure.
    """
    with _build_lock(log):
        return _build_base(client or connect(), mirror, log)


def _build_base(client: docker.DockerClient, mirror: str | None, log: Log) -> str:
    mirror = mirror or os.environ.get("TASKFLEET_DEBIAN_MIRROR") or DEFAULT_MIRROR
    digest = base_hash(mirror)
    name = f"{BASE_REPO}:{digest}"
    if image_id(client, name):
        log(f"==> {name} exists — nothing to do")
        return name
    cache = BUILD_DIR / "base"
    cache.mkdir(parents=True, exist_ok=True)
    tarball = cache / f"rootfs-{digest}.tar"
    if tarball.exists():
        log(f"==> {name}: importing the cached rootfs {tarball.relative_to(REPO)}")
    else:
        _check_debootstrap()
        log(f"==> {name}: building Debian {SUITE} from {mirror} (takes 1-3 min)")
        _run_debootstrap(tarball, mirror, cache / f"debootstrap-{digest}.log", log)
        # Keep only the current rootfs: an old one is never used again.
        for old in cache.glob("rootfs-*.tar"):
            if old != tarball:
                old.unlink()
    try:
        client.api.import_image_from_file(
            str(tarball), repository=BASE_REPO, tag=digest, changes=list(BASE_IMPORT_CHANGES)
        )
    except docker.errors.DockerException as exc:
        raise ImagesError(
            f"docker import of {tarball.name} failed ({exc})",
            f"delete {tarball.relative_to(REPO)} and run make base-image again",
        ) from exc
    size = client.images.get(name).attrs["Size"] / 1e6
    log(f"==> {name} imported ({size:.0f} MB)")
    return name


# --------------------------------------------------------------------------- images


def _runtime_files() -> Iterator[tuple[str, Path]]:
    """(path in the staged tree, source path) of everything the wheel is built from."""
    yield "pyproject.toml", REPO / "pyproject.toml"
    pkg = REPO / "src" / "taskfleet"
    for path in sorted(pkg.rglob("*")):
        rel = path.relative_to(pkg)
        if (
            not path.is_file()
            or rel.parts[0] in RUNTIME_EXCLUDES
            or "__pycache__" in rel.parts
            or path.suffix in {".pyc", ".pyo"}
        ):
            continue
        yield f"src/taskfleet/{rel.as_posix()}", path


# The wheel's metadata wants a readme; the project README is documentation, not
# runtime, and editing it must not change the image tag.
_STUB_README = "taskfleet runtime (standard library only). See the project README.\n"


def _recipe_files() -> Iterator[tuple[str, Path]]:
    """(name, path) of the image recipe: the Dockerfile and its helpers, no subfolders."""
    for path in sorted(IMAGE_DIR.iterdir()):
        if path.is_file():
            yield f"images/taskfleet/{path.name}", path


def content_tag(base_id: str, job_digests: Sequence[str] = ()) -> str:
    """TAG = hash of the staged runtime tree, the image recipe files, the base image ID and
    the contents of every job wheel (``jobpkgs.JobSet.digests``; none without JOBS)."""
    return engine.tree_hash(
        [*_runtime_files(), *_recipe_files()], _STUB_README, base_id, *job_digests
    )


def _build_wheel(context: Path, log: Log) -> Path:
    """Stage the runtime source (no ops, stub README) and ``pip wheel`` it into the context."""
    stage = context / "stage"
    for rel, path in _runtime_files():
        (stage / rel).parent.mkdir(parents=True, exist_ok=True)
        shutil.copy2(path, stage / rel)
    (stage / "README.md").write_text(_STUB_README)
    wheels = context / "wheels"
    log("==> building the taskfleet wheel (pip wheel --no-deps)")
    proc = subprocess.run(
        [sys.executable, "-m", "pip", "wheel", "--no-deps", "-q", "-w", str(wheels), str(stage)],
        capture_output=True,
        text=True,
        check=False,
    )
    built = sorted(wheels.glob("taskfleet-*.whl"))
    if proc.returncode != 0 or len(built) != 1:
        last = (proc.stderr.strip().splitlines() or ["no output"])[-1]
        raise ImagesError(
            f"pip wheel failed ({last[:160]})",
            f"run `{sys.executable} -m pip wheel --no-deps {stage}` to see why "
            "(it needs setuptools from PyPI or pip's cache)",
        )
    shutil.rmtree(stage)
    return built[0]


def _git(*args: str) -> str:
    try:
        proc = subprocess.run(
            ["git", "-C", str(REPO), *args], capture_output=True, text=True, check=False
        )
    except OSError:
        return ""
    return proc.stdout.strip() if proc.returncode == 0 else ""


def _oci_args(base: str) -> dict[str, str]:
    """Build args for the OCI labels. They change the image ID, never the tag."""
    import tomllib

    project = tomllib.loads((REPO / "pyproject.toml").read_text())["project"]
    revision = _git("rev-parse", "HEAD")
    if revision and _git("status", "--porcelain", "--", "src/taskfleet", "images/taskfleet"):
        revision += "-dirty"
    epoch = os.environ.get("SOURCE_DATE_EPOCH")
    created = (
        dt.datetime.fromtimestamp(int(epoch), dt.UTC) if epoch else dt.datetime.now(dt.UTC)
    ).strftime("%Y-%m-%dT%H:%M:%SZ")
    source = os.environ.get("TASKFLEET_SOURCE_URL") or _git("remote", "get-url", "origin")
    return {
        "BASE_IMAGE": base,
        "VERSION": str(project["version"]),
        "REVISION": revision or "unknown",
        "SOURCE": source,
        "CREATED": created,
    }


def _docker_build(
    client: docker.DockerClient,
    context: Path,
    target: str,
    name: str,
    buildargs: dict[str, str],
    log: Log,
    with_jobs: bool,
) -> None:
    """One legacy-builder build of ``target``; prints its steps; raises ImagesError on failure."""
    fix = "fix images/taskfleet/Dockerfile or the base image, then run make images again"
    if with_jobs:
        # The build loads every job entry point: an import error there is a job package's.
        fix = (
            "if a job entry point failed to load, declare what it imports as dependencies "
            "in its pyproject.toml; else " + fix
        )
    engine.build(
        client,
        context,
        name,
        buildargs=buildargs,
        target=target,
        log=log,
        error=ImagesError,
        what=f"docker build --target {target}",
        fix=fix,
    )
    if not image_id(client, name):
        raise ImagesError(f"docker build produced no {name}", "see the output above")


def build_images(
    base_image: str | None = None,
    client: docker.DockerClient | None = None,
    log: Log = _log,
    jobs: Sequence[str] = (),
) -> ImageSet:
    """Build or reuse both images; write and return .build/images.json's content.

    ``base_image`` None builds/reuses taskfleet-base; otherwise it must already be
    in the engine (no registry: ``docker load`` it first). ``jobs`` are job
    packages (project folders or wheels, relative to the working directory)
    installed into both images with their dependencies. Raises ImagesError; a
    failed build tags nothing it did not have before.
    """
    with _build_lock(log):
        return _build_images(client or connect(), base_image, jobs, log)


def _build_images(
    client: docker.DockerClient, base_image: str | None, jobs: Sequence[str], log: Log
) -> ImageSet:
    started = time.monotonic()
    # A mistyped JOBS entry stops the build before anything else runs.
    sources = jobpkgs.parse_sources(jobs, Path.cwd())
    if base_image:
        base = base_image
        log(f"==> using base image {base} (BASE_IMAGE)")
    else:
        base = build_base(client, log=log)
    base_id = image_id(client, base)
    if base_id is None:
        raise ImagesError(
            f"base image {base} is not in the Docker engine",
            "docker load it (or docker pull it where a registry is reachable), "
            "or leave BASE_IMAGE empty to build taskfleet-base",
        )
    # Every job wheel is made and checked before any image is built: a bad
    # package stops here, and nothing is tagged.
    jobset = jobpkgs.prepare(sources, client, base, base_id, log)
    tag = content_tag(base_id, jobset.digests)
    images = ImageSet(tag, f"{MASTER_REPO}:{tag}", f"{WORKER_REPO}:{tag}", base, jobset.versions())
    if image_id(client, images.master) and image_id(client, images.worker):
        log(f"==> {images.master} and {images.worker} exist — nothing to do")
    else:
        context = BUILD_DIR / "context"
        shutil.rmtree(context, ignore_errors=True)
        context.mkdir(parents=True)
        for path in IMAGE_DIR.iterdir():
            if path.is_file():
                shutil.copy2(path, context / path.name)
        _build_wheel(context, log)
        (context / "jobs").mkdir()
        for wheel in jobset.wheels:
            shutil.copy2(wheel, context / "jobs" / wheel.name)
        buildargs = {**_oci_args(base), **jobset.build_args()}
        with _untag_on_failure(client, [images.master, images.worker], log):
            for target, name in (("master", images.master), ("worker", images.worker)):
                log(f"==> docker build --target {target} -t {name}")
                _docker_build(client, context, target, name, buildargs, log, bool(jobs))
        shutil.rmtree(context, ignore_errors=True)
        log(f"==> built {images.master} and {images.worker} in {time.monotonic() - started:.0f} s")
    for name in (images.master, images.worker):
        log(f"   {name}: {client.images.get(name).attrs['Size'] / 1e6:.0f} MB")
    for line in jobset.summary():
        log(line)
    write_images_json(images)
    return images


@contextlib.contextmanager
def _untag_on_failure(client: docker.DockerClient, names: list[str], log: Log) -> Iterator[None]:
    """Remove the tags in ``names`` that this block made if it fails: both images or neither."""
    had = {name for name in names if image_id(client, name)}
    try:
        yield
    except BaseException:
        for name in names:
            if name not in had and image_id(client, name):
                with contextlib.suppress(docker.errors.APIError):
                    client.images.remove(name)
                    log(f"   {name}: removed (its pair failed to build)")
        raise


def write_images_json(images: ImageSet) -> Path:
    """Write .build/images.json atomically (readers never see half a file)."""
    path = BUILD_DIR / "images.json"
    engine.write_atomic(path, json.dumps(asdict(images), indent=2) + "\n")
    return path


def save_images(
    images: ImageSet,
    log: Log = _log,
) -> Path:
    """``docker save`` both images into .build/taskfleet-images-<TAG>.tar once; reuse it after.

    The tarball holds both images (shared layers once) for ``docker load`` on hosts
    without a registry. Tarballs of older tags stay (a deploy may be copying one);
    ``make clean`` removes them.
    """
    with _build_lock(log):
        return _save_images(images, log)


def _save_images(images: ImageSet, log: Log) -> Path:
    path = BUILD_DIR / f"taskfleet-images-{images.tag}.tar"
    if path.exists():
        log(f"==> {path.relative_to(REPO)} exists — reusing it")
        return path
    log(f"==> docker save {images.master} {images.worker} → {path.relative_to(REPO)}")
    tmp = path.with_suffix(".tar.partial")
    proc = subprocess.run(
        ["docker", "save", "-o", str(tmp), images.master, images.worker],
        capture_output=True,
        text=True,
        check=False,
    )
    if proc.returncode != 0:
        tmp.unlink(missing_ok=True)
        last = (proc.stderr.strip().splitlines() or ["no output"])[-1]
        raise ImagesError(f"docker save failed ({last[:200]})", "run make images, then retry")
    os.replace(tmp, path)
    log(f"   {path.stat().st_size / 1e6:.0f} MB")
    return path


# --------------------------------------------------------------------------- CLI


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="python -m taskfleet.ops.images",
        description="Build taskfleet's container images without a registry.",
    )
    sub = parser.add_subparsers(dest="command", required=True)
    base = sub.add_parser("base", help="build or reuse taskfleet-base:<hash> from Debian's archive")
    base.add_argument(
        "--mirror",
        default=os.environ.get("TASKFLEET_DEBIAN_MIRROR") or DEFAULT_MIRROR,
        help="Debian mirror (plain http; default %(default)s, env TASKFLEET_DEBIAN_MIRROR)",
    )
    for cmd, text in (
        ("build", "build or reuse taskfleet-master:<TAG> and taskfleet-worker:<TAG>"),
        ("save", "build, then docker save both images into .build/taskfleet-images-<TAG>.tar"),
    ):
        p = sub.add_parser(cmd, help=text)
        p.add_argument(
            "--base-image",
            default=os.environ.get("BASE_IMAGE") or None,
            help="use this image (already in the engine) instead of taskfleet-base, "
            "e.g. python:3.13-slim (env BASE_IMAGE)",
        )
        p.add_argument(
            "--job",
            dest="jobs",
            action="append",
            default=[],
            metavar="PATH",
            help="a job package to install into both images: a project folder (with a "
            "pyproject.toml) or a .whl; repeat for more (make images JOBS=...)",
        )
    return parser


def main(argv: list[str] | None = None) -> int:
    args = _parser().parse_args(argv)

    def run() -> None:
        with engine.docker_errors(ImagesError):
            if args.command == "base":
                print(build_base(mirror=args.mirror))
            elif args.command == "build":
                print(json.dumps(asdict(build_images(args.base_image, jobs=args.jobs))))
            else:
                print(save_images(build_images(args.base_image, jobs=args.jobs)))

    return run_cli(run)


if __name__ == "__main__":
    sys.exit(main())


__all__: list[Any] = [
    "ImageSet",
    "ImagesError",
    "build_base",
    "build_images",
    "connect",
    "content_tag",
    "save_images",
]

"""Job packages: the user's own code, as wheels for the images' Python and platform.

``make images JOBS="examples/primes dist/foo-1.2-py3-none-any.whl"`` names job
packages: project folders (with a ``pyproject.toml``) or wheel files. This
module turns them into one set of wheels that installs offline into both
images (the master resolves job names at submit, the workers run the code):

1. :func:`probe_target` asks the base image which Python and C library it
   has (one ``docker run``, cached by the base image's ID), so wheels are
   chosen for the images, not for the control node;
2. each project folder is copied (without VCS, virtualenv and build folders)
   and built with ``pip wheel --no-deps`` on the control node; given wheels
   are taken as they are;
3. one ``pip download --only-binary=:all:`` for the images' Python and
   manylinux platform resolves every package's dependencies to wheels
   (a compiled dependency such as numpy comes as its manylinux wheel);
4. the set is kept under ``.build/jobs/<key>/`` with a manifest. The key is
   a hash of the inputs (each project's files, each given wheel's contents,
   the target), so an unchanged JOBS list needs no build and no network; a
   changed one resolves again.

The image tag follows :attr:`JobSet.digests`: a hash of each wheel's
*contents* (member names and bytes, never zip timestamps), so a rebuilt but
unchanged package keeps the tag and a changed one gives a new tag.

Every failure is an :class:`~taskfleet.ops.errors.ImagesError` naming the
package as it was given and the fix; nothing is written to the cache then.
"""

from __future__ import annotations

import dataclasses
import email.parser
import hashlib
import json
import os
import re
import shutil
import subprocess
import sys
import zipfile
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

import docker
import docker.errors

from taskfleet.ops import engine
from taskfleet.ops.engine import HASH_LEN, REPO, Log
from taskfleet.ops.errors import ImagesError

#: Where resolved wheel sets are kept, one folder per input key.
CACHE_DIR = REPO / ".build" / "jobs"
#: Resolved sets kept besides the one in use (switching JOBS back and forth stays offline).
CACHE_KEEP = 6
#: Folders of a project that never go into its wheel: VCS, virtualenvs, build output, caches.
SKIP_TOP = frozenset({"build", "dist", ".venv", "venv", ".tox", ".nox", "node_modules"})
SKIP_ANYWHERE = frozenset(
    {".git", ".hg", ".svn", "__pycache__", ".pytest_cache", ".mypy_cache", ".ruff_cache"}
)
#: The distribution the images already carry; a job package must not bring its own.
RUNTIME_DIST = "taskfleet"

# Asked of the base image: interpreter, version, machine and C library.
_PROBE = (
    "import json, os, platform, sys; print(json.dumps({"
    "'implementation': sys.implementation.name, "
    "'version': list(sys.version_info[:2]), "
    "'machine': platform.machine(), "
    "'libc': os.confstr('CS_GNU_LIBC_VERSION') or ''}))"
)
# manylinux's legacy names and the glibc they stand for (PEP 600).
_LEGACY_MANYLINUX = {
    "manylinux2014": ((2, 17), {"x86_64", "i686", "aarch64", "ppc64le", "s390x", "armv7l"}),
    "manylinux2010": ((2, 12), {"x86_64", "i686"}),
    "manylinux1": ((2, 5), {"x86_64", "i686"}),
}
# pip's "Could not find a version that satisfies the requirement X (from Y) (from versions: …)".
_NO_MATCH = re.compile(r"satisfies the requirement (?P<req>[^ ]+)(?: \(from (?P<parent>[^)]+)\))?")
_WHEEL_NAME = re.compile(
    r"^(?P<name>[^-]+)-(?P<version>[^-]+)(-\d[^-]*)?-(?P<py>[^-]+)-(?P<abi>[^-]+)-(?P<plat>[^-]+)\.whl$"
)


def canonical(name: str) -> str:
    """A distribution name as PEP 503 compares them (``Foo_Bar`` → ``foo-bar``)."""
    return re.sub(r"[-_.]+", "-", name).lower()


# --------------------------------------------------------------------------- target


@dataclass(frozen=True)
class Target:
    """The images' Python and platform, as the base image reported them."""

    version: tuple[int, int]  # (3, 13)
    machine: str  # x86_64
    glibc: tuple[int, int]  # (2, 41)

    @property
    def abi(self) -> str:
        return f"cp{self.version[0]}{self.version[1]}"

    def platforms(self) -> list[str]:
        """Every manylinux tag this glibc runs, newest first (pip takes them as given)."""
        major, minor = self.glibc
        tags = [f"manylinux_{major}_{m}_{self.machine}" for m in range(minor, 4, -1)]
        for legacy, (needs, machines) in _LEGACY_MANYLINUX.items():
            if self.machine in machines and self.glibc >= needs:
                tags.append(f"{legacy}_{self.machine}")
        return tags

    def describe(self) -> str:
        """How messages name the target: ``CPython 3.13 on manylinux_2_41_x86_64``."""
        return f"CPython {self.version[0]}.{self.version[1]} on {self.platforms()[0]}"

    def pip_args(self) -> list[str]:
        """``pip download`` options that choose wheels for this target, never sources."""
        args = [
            "--only-binary=:all:",
            "--implementation",
            "cp",
            "--python-version",
            f"{self.version[0]}.{self.version[1]}",
            "--abi",
            self.abi,
        ]
        for platform in self.platforms():
            args += ["--platform", platform]
        return args

    def tags(self) -> set[tuple[str, str, str]]:
        """Every (python, abi, platform) tag the images' interpreter installs (PEP 425)."""
        major, minor = self.version
        platforms = self.platforms()
        found = {(self.abi, self.abi, p) for p in platforms}
        found |= {(f"cp{major}{n}", "abi3", p) for n in range(2, minor + 1) for p in platforms}
        pythons = [self.abi, f"py{major}", *(f"py{major}{n}" for n in range(minor + 1))]
        found |= {(py, "none", p) for py in pythons for p in [*platforms, "any"]}
        return found

    def accepts(self, wheel_name: str) -> bool:
        """Whether a wheel file name's tags (compressed tag sets too) fit this target."""
        m = _WHEEL_NAME.match(wheel_name)
        if not m:
            return False
        tags = self.tags()
        return any(
            (py, abi, plat) in tags
            for py in m["py"].split(".")
            for abi in m["abi"].split(".")
            for plat in m["plat"].split(".")
        )

    def to_json(self) -> dict[str, Any]:
        return {"version": list(self.version), "machine": self.machine, "glibc": list(self.glibc)}

    @classmethod
    def from_probe(cls, base: str, facts: dict[str, Any]) -> Target:
        """Read the probe's answer; raise ImagesError for a base that cannot take wheels."""
        libc = str(facts.get("libc", ""))
        if facts.get("implementation") != "cpython" or not libc.startswith("glibc "):
            raise ImagesError(
                f"base image {base} has {facts.get('implementation')} with "
                f"{libc or 'no glibc'}: job packages need CPython on glibc (manylinux wheels)",
                "use taskfleet-base (leave BASE_IMAGE empty) or a Debian-based python image",
            )
        major, minor = (int(p) for p in libc.split()[1].split(".")[:2])
        version = facts["version"]
        return cls((int(version[0]), int(version[1])), str(facts["machine"]), (major, minor))


def probe_target(client: docker.DockerClient, base: str, base_id: str, log: Log) -> Target:
    """The base image's Python and platform (one short container, cached by image ID)."""
    cache = CACHE_DIR / f"target-{base_id.removeprefix('sha256:')[:HASH_LEN]}.json"
    if cache.exists():
        return Target.from_probe(base, json.loads(cache.read_text()))
    log(f"==> asking {base} for its Python and platform")
    try:
        out = client.containers.run(
            base_id,
            ["python3", "-c", _PROBE],
            entrypoint=[],
            remove=True,
            network_disabled=True,
            labels={"io.taskfleet.managed": "true", "io.taskfleet.role": "probe"},
        )
    except docker.errors.DockerException as exc:
        raise ImagesError(
            f"cannot run python3 in the base image {base} ({engine_error(exc)})",
            "job packages need a base image with python3 (taskfleet-base has it)",
        ) from None
    facts = json.loads(out.decode().strip().splitlines()[-1])
    target = Target.from_probe(base, facts)
    engine.write_atomic(cache, json.dumps(facts) + "\n")
    return target


def engine_error(exc: docker.errors.DockerException) -> str:
    return (str(exc).strip().splitlines() or [type(exc).__name__])[-1][:200]


# --------------------------------------------------------------------------- sources


@dataclass(frozen=True)
class Source:
    """One JOBS entry: a project folder or a wheel file, named as the user gave it."""

    given: str
    path: Path
    kind: Literal["project", "wheel"]


def parse_sources(entries: Iterable[str], cwd: Path) -> list[Source]:
    """Check every JOBS entry before anything is built; raise ImagesError for the first bad one.

    Relative paths are relative to ``cwd`` (the repository root under ``make``).
    """
    sources: list[Source] = []
    for given in entries:
        path = (cwd / given).resolve()
        where = "JOBS takes project folders (with a pyproject.toml) and .whl files"
        if path.is_dir():
            if not (path / "pyproject.toml").is_file():
                raise ImagesError(
                    f"job package {given}: no pyproject.toml in {path}",
                    "give the project's root folder (where its pyproject.toml is), "
                    "or build a wheel and give the .whl",
                )
            sources.append(Source(given, path, "project"))
        elif path.is_file() and path.suffix == ".whl":
            sources.append(Source(given, path, "wheel"))
        elif path.exists():
            raise ImagesError(f"job package {given}: not a folder or a .whl file", where)
        else:
            raise ImagesError(f"job package {given}: {path} does not exist", where)
    seen: dict[Path, str] = {}
    for src in sources:
        if src.path in seen:
            raise ImagesError(
                f"job package {src.given}: named twice (also as {seen[src.path]})",
                "list each job package once",
            )
        seen[src.path] = src.given
    return sources


def project_files(root: Path) -> Iterator[tuple[str, Path]]:
    """(relative name, path) of a project's files that can shape its wheel, sorted.

    Leaves out version control, virtualenvs, build output and caches: they
    change without changing the package (and some are large).
    """
    for dirpath, dirnames, filenames in os.walk(root):
        rel = Path(dirpath).relative_to(root)
        top = rel == Path(".")
        dirnames[:] = sorted(
            d
            for d in dirnames
            if d not in SKIP_ANYWHERE
            and not d.endswith(".egg-info")
            and not (top and d in SKIP_TOP)
        )
        for name in sorted(filenames):
            if name.endswith((".pyc", ".pyo")):
                continue
            yield (rel / name).as_posix(), Path(dirpath) / name


def wheel_digest(path: Path) -> str:
    """Hash of a wheel's contents: member names and bytes, in name order.

    Zip timestamps, compression and member order do not count, so a package
    rebuilt from the same source keeps its digest and the images keep their
    tag. (File modes do not count either: the image installer ignores them.)
    """
    digest = hashlib.sha256()
    try:
        with zipfile.ZipFile(path) as zf:
            for info in sorted(zf.infolist(), key=lambda i: i.filename):
                if info.is_dir():
                    continue
                data = zf.read(info)
                digest.update(f"{info.filename}\0{len(data)}\0".encode())
                digest.update(data)
    except (zipfile.BadZipFile, OSError) as exc:
        raise ImagesError(
            f"job package {path.name}: not a readable wheel ({exc})",
            "rebuild it with `pip wheel`",
        ) from None
    return digest.hexdigest()


def source_key(source: Source) -> str:
    """What decides whether a source's wheels must be made again."""
    if source.kind == "wheel":
        return f"wheel:{wheel_digest(source.path)}"
    return f"project:{engine.tree_hash(project_files(source.path))}"


def cache_key(sources: Sequence[Source], target: Target) -> str:
    """The cache folder of a JOBS list: its sources in order, and the target."""
    parts = [json.dumps(target.to_json(), sort_keys=True), *(source_key(s) for s in sources)]
    return hashlib.sha256("\n".join(parts).encode()).hexdigest()[:HASH_LEN]


# --------------------------------------------------------------------------- wheels


@dataclass(frozen=True)
class Wheel:
    """One wheel of a set: its distribution, version and file."""

    name: str
    version: str
    file: str


def wheel_metadata(path: Path) -> tuple[str, str, list[str]]:
    """(name, version, Requires-Dist lines) from a wheel's METADATA."""
    try:
        with zipfile.ZipFile(path) as zf:
            meta = [n for n in zf.namelist() if re.fullmatch(r"[^/]+\.dist-info/METADATA", n)]
            if len(meta) != 1:
                raise ImagesError(
                    f"job package {path.name}: not a wheel (no single .dist-info/METADATA)",
                    "rebuild it with `pip wheel`",
                )
            text = zf.read(meta[0]).decode("utf-8", errors="replace")
    except (zipfile.BadZipFile, OSError) as exc:
        raise ImagesError(
            f"job package {path.name}: not a readable wheel ({exc})",
            "rebuild it with `pip wheel`",
        ) from None
    msg = email.parser.Parser().parsestr(text, headersonly=True)
    return str(msg["Name"]), str(msg["Version"]), [str(r) for r in msg.get_all("Requires-Dist", [])]


def requirement_name(requirement: str) -> str:
    """The distribution a Requires-Dist line names (``numpy>=2; python_version>'3'`` → numpy)."""
    m = re.match(r"\s*([A-Za-z0-9][A-Za-z0-9._-]*)", requirement)
    return canonical(m[1]) if m else ""


def label_value(wheels: Iterable[Wheel]) -> str:
    """An image label listing distributions: ``name==version`` comma-separated, by name."""
    ordered = sorted(wheels, key=lambda w: canonical(w.name))
    return ",".join(f"{w.name}=={w.version}" for w in ordered)


@dataclass(frozen=True)
class JobSet:
    """The wheels that go into both images for one JOBS list (empty: no job packages)."""

    directory: Path | None = None
    packages: tuple[Wheel, ...] = ()  # the job packages themselves, in JOBS order
    dependencies: tuple[Wheel, ...] = ()  # what they need, resolved for the target
    digests: tuple[str, ...] = ()  # wheel_digest of every wheel, sorted

    @property
    def wheels(self) -> list[Path]:
        if self.directory is None:
            return []
        return [self.directory / w.file for w in (*self.packages, *self.dependencies)]

    def versions(self) -> dict[str, str]:
        """The job packages' name → version (images.json's ``jobs``)."""
        return {w.name: w.version for w in self.packages}

    def build_args(self) -> dict[str, str]:
        """The Dockerfile's label arguments."""
        return {
            "JOB_PACKAGES": label_value(self.packages),
            "JOB_DEPENDENCIES": label_value(self.dependencies),
        }

    def summary(self) -> list[str]:
        """Lines ``make images`` prints about the job packages."""
        if not self.packages:
            return ["   job packages: none (JOBS= or taskfleet_job_packages adds yours)"]
        lines = ["   job packages: " + ", ".join(f"{w.name} {w.version}" for w in self.packages)]
        deps = ", ".join(f"{w.name} {w.version}" for w in self.dependencies) or "none"
        lines.append(f"   their dependencies: {deps}")
        return lines

    def to_json(self) -> dict[str, Any]:
        return {
            "packages": [dataclasses.asdict(w) for w in self.packages],
            "dependencies": [dataclasses.asdict(w) for w in self.dependencies],
            "digests": list(self.digests),
        }

    @classmethod
    def from_json(cls, directory: Path, data: dict[str, Any]) -> JobSet:
        return cls(
            directory,
            tuple(Wheel(**w) for w in data["packages"]),
            tuple(Wheel(**w) for w in data["dependencies"]),
            tuple(data["digests"]),
        )


def prepare(
    sources: Sequence[Source],
    client: docker.DockerClient,
    base: str,
    base_id: str,
    log: Log,
) -> JobSet:
    """The wheel set for ``sources`` on ``base``: from the cache, else built and resolved.

    Raises ImagesError naming the package and the fix; a failed build leaves
    the cache as it was.
    """
    if not sources:
        return JobSet()
    target = probe_target(client, base, base_id, log)
    key = cache_key(sources, target)
    final = CACHE_DIR / key
    manifest = final / "manifest.json"
    if manifest.exists():
        log(f"==> job packages: reusing {final.relative_to(REPO)} (inputs unchanged)")
        os.utime(final)  # most recently used: kept by _prune
        return JobSet.from_json(final, json.loads(manifest.read_text()))
    work = CACHE_DIR / f".{key}.partial-{os.getpid()}"
    shutil.rmtree(work, ignore_errors=True)
    try:
        jobset = _build(sources, target, work, log)
        engine.write_atomic(work / "manifest.json", json.dumps(jobset.to_json(), indent=2) + "\n")
        shutil.rmtree(final, ignore_errors=True)
        os.replace(work, final)
    finally:
        shutil.rmtree(work, ignore_errors=True)
    _prune(keep=final)
    return dataclasses.replace(jobset, directory=final)


def _build(sources: Sequence[Source], target: Target, work: Path, log: Log) -> JobSet:
    local = work / "local"
    local.mkdir(parents=True)
    by_wheel: dict[str, Source] = {}
    for index, src in enumerate(sources):
        if src.kind == "project":
            made = _project_wheel(src, work / "stage" / str(index), local, log)
        else:
            made = _copy(src, local)
        by_wheel[made.name] = src
    packages: list[Wheel] = []
    names: dict[str, Source] = {}
    for file, src in by_wheel.items():
        name, version, requires = wheel_metadata(local / file)
        _check_package(src, name, requires, target, file, names)
        names[canonical(name)] = src
        packages.append(Wheel(name, version, file))

    resolved = work / "wheels"
    log(f"==> resolving their dependencies as wheels for {target.describe()}")
    failure = _pip_download(target, local, resolved, [local / p.file for p in packages])
    if failure is not None:
        raise _resolution_error(failure, sources, packages, names, target, local, work)

    dependencies: list[Wheel] = []
    seen: dict[str, str] = {}
    for path in sorted(resolved.glob("*.whl")):
        name, version, _ = wheel_metadata(path)
        if canonical(name) in seen:
            # A job package given here and another version of it that a second job
            # package requires from the index: the images can hold only one.
            raise ImagesError(
                f"job packages: two versions of {name} ({seen[canonical(name)]}, {path.name})",
                f"make every requirement on {name} accept the one JOBS gives",
            )
        seen[canonical(name)] = path.name
        if canonical(name) in names:
            continue  # a job package itself (pip copies the given wheels too)
        if canonical(name) == RUNTIME_DIST:
            continue  # the images have their own taskfleet (refused above for job packages)
        dependencies.append(Wheel(name, version, path.name))
    final_dir = work / "set"
    final_dir.mkdir()
    for wheel in packages:
        shutil.copy2(local / wheel.file, final_dir / wheel.file)
    for wheel in dependencies:
        shutil.copy2(resolved / wheel.file, final_dir / wheel.file)
    digests = tuple(sorted(wheel_digest(final_dir / p.name) for p in final_dir.iterdir()))
    # The set's files move to the top of the cache folder; the scratch goes.
    for path in final_dir.iterdir():
        os.replace(path, work / path.name)
    for scratch in (final_dir, local, resolved, work / "stage"):
        shutil.rmtree(scratch, ignore_errors=True)
    return JobSet(work, tuple(packages), tuple(dependencies), digests)


def _check_package(
    src: Source,
    name: str,
    requires: list[str],
    target: Target,
    file: str,
    names: dict[str, Source],
) -> None:
    """Refuse a package the images cannot take, before anything is downloaded."""
    if canonical(name) == RUNTIME_DIST or RUNTIME_DIST in map(requirement_name, requires):
        what = "is taskfleet itself" if canonical(name) == RUNTIME_DIST else "depends on taskfleet"
        raise ImagesError(
            f"job package {src.given}: {what}",
            "remove taskfleet from its dependencies: the images already have the taskfleet "
            "that made them",
        )
    if canonical(name) in names:
        raise ImagesError(
            f"job package {src.given}: {name} is also built from {names[canonical(name)].given}",
            "list each distribution once",
        )
    if not target.accepts(file):
        raise ImagesError(
            f"job package {src.given}: its wheel {file} does not fit the images' "
            f"{target.describe()}",
            "give a pure-Python project, or a wheel built for that Python and manylinux "
            "(e.g. with cibuildwheel)",
        )


def _copy(src: Source, local: Path) -> Path:
    dest = local / src.path.name
    if not _WHEEL_NAME.match(src.path.name):
        raise ImagesError(
            f"job package {src.given}: {src.path.name} is not a wheel file name "
            "(name-version-python-abi-platform.whl)",
            "give the .whl as pip wheel wrote it",
        )
    shutil.copy2(src.path, dest)
    return dest


def _project_wheel(src: Source, stage: Path, local: Path, log: Log) -> Path:
    """Copy the project to ``stage`` (no VCS, venvs, build output) and ``pip wheel`` the copy.

    Building a copy leaves the user's folder untouched (setuptools writes
    build/ and *.egg-info next to the sources).
    """
    for rel, path in project_files(src.path):
        (stage / rel).parent.mkdir(parents=True, exist_ok=True)
        shutil.copy2(path, stage / rel)
    log(f"==> building the job package {src.given} (pip wheel --no-deps)")
    out = stage.with_name(stage.name + ".out")
    proc = subprocess.run(
        [sys.executable, "-m", "pip", "wheel", "--no-deps", "-q", "-w", str(out), str(stage)],
        capture_output=True,
        text=True,
        check=False,
    )
    built = sorted(out.glob("*.whl")) if out.exists() else []
    if proc.returncode != 0 or len(built) != 1:
        log_file = CACHE_DIR / f"pip-wheel-{canonical(src.path.name)}.log"
        engine.write_atomic(log_file, proc.stdout + proc.stderr)
        raise ImagesError(
            f"job package {src.given}: building its wheel failed ({_last_error(proc.stderr)})",
            f"see {log_file.relative_to(REPO)} (or run `{_shown(sys.executable)} -m pip wheel "
            f"--no-deps {src.given}`), fix the project, then run make images again",
        )
    dest = local / built[0].name
    os.replace(built[0], dest)
    return dest


def _shown(path: str) -> str:
    """A path as a message shows it: relative to the repository when inside it."""
    try:
        return str(Path(path).relative_to(REPO))
    except ValueError:
        return path


def _last_error(stderr: str) -> str:
    """The most telling line of pip's output.

    A failed build backend's own output ends with ``[end of output]``: its
    last line says why (``compiler not found``). Otherwise the last
    ``…Error: …`` or ``ERROR: …`` line.
    """
    lines = [ln.strip() for ln in stderr.splitlines() if ln.strip()]
    if "[end of output]" in lines:
        end = len(lines) - 1 - lines[::-1].index("[end of output]")
        if end > 0 and not lines[end - 1].startswith("\u2570"):  # not the "╰─> [0 lines" header
            return lines[end - 1][:200]
    errors = [ln for ln in lines if re.match(r"^(ERROR: (?!Exception:)|[\w.]*Error: )", ln)]
    return (errors or lines or ["no output"])[-1][:200]


def _pip_download(target: Target, local: Path, dest: Path, wheels: Sequence[Path]) -> str | None:
    """Resolve ``wheels`` and their dependencies into ``dest``; pip's stderr on failure."""
    proc = subprocess.run(
        [
            sys.executable,
            "-m",
            "pip",
            "download",
            "-q",
            *target.pip_args(),
            "--find-links",
            str(local),
            "-d",
            str(dest),
            *map(str, wheels),
        ],
        capture_output=True,
        text=True,
        check=False,
    )
    return None if proc.returncode == 0 else proc.stderr


def _resolution_error(
    stderr: str,
    sources: Sequence[Source],
    packages: Sequence[Wheel],
    names: dict[str, Source],
    target: Target,
    local: Path,
    work: Path,
) -> ImagesError:
    """Name the job package whose dependencies cannot be had as wheels, and the fix.

    pip names the requirement it could not satisfy and what asked for it; the
    package behind a deeper dependency is found by resolving each alone.
    """
    culprit: Source | None = None
    m = _NO_MATCH.search(stderr)
    if len(packages) == 1:
        culprit = sources[0]
    elif m and m["parent"] and canonical(m["parent"].split("==")[0]) in names:
        culprit = names[canonical(m["parent"].split("==")[0])]
    else:
        for wheel in packages:
            alone = _pip_download(target, local, work / "alone", [local / wheel.file])
            if alone is not None:
                culprit, stderr = names[canonical(wheel.name)], alone
                m = _NO_MATCH.search(stderr)
                break
    if culprit is None:
        return ImagesError(
            f"job packages {', '.join(s.given for s in sources)}: their dependencies conflict "
            f"({_last_error(stderr)})",
            "make their version requirements compatible, or deploy them in separate images",
        )
    if m:
        return ImagesError(
            f"job package {culprit.given}: its dependency {m['req']} has no wheel for the "
            f"images' {target.describe()}",
            f"require a version of {requirement_name(m['req']) or m['req']} that ships one, "
            f"or build its wheel (pip wheel --no-deps {requirement_name(m['req'])}) "
            "and add the .whl to JOBS",
        )
    return ImagesError(
        f"job package {culprit.given}: resolving its dependencies failed ({_last_error(stderr)})",
        "check its dependencies in pyproject.toml and that the package index is reachable",
    )


def _prune(keep: Path) -> None:
    """Keep the newest CACHE_KEEP sets (by last use) besides ``keep``; drop the rest."""
    sets = sorted(
        (p for p in CACHE_DIR.iterdir() if p.is_dir() and not p.name.startswith(".") and p != keep),
        key=lambda p: p.stat().st_mtime,
        reverse=True,
    )
    for old in sets[CACHE_KEEP:]:
        shutil.rmtree(old, ignore_errors=True)

"""Job packages: the pure parts of turning JOBS into wheels and an image tag.

Wheel digests, the tag they feed, the image labels, the target's wheel tags,
the JOBS entries' checks, the project files that count, and the one-line
errors. Building and resolving for real runs in tests/containers.
"""

from __future__ import annotations

import zipfile
from pathlib import Path

import pytest

from taskfleet.ops import images as images_mod
from taskfleet.ops import jobpkgs
from taskfleet.ops.errors import ImagesError

TRIXIE = jobpkgs.Target((3, 13), "x86_64", (2, 41))

METADATA = "Metadata-Version: 2.4\nName: {name}\nVersion: {version}\n{requires}\n"


def make_wheel(
    path: Path,
    files: dict[str, bytes],
    date: tuple[int, int, int, int, int, int] = (2024, 1, 1, 0, 0, 0),
    compression: int = zipfile.ZIP_DEFLATED,
) -> Path:
    with zipfile.ZipFile(path, "w", compression) as zf:
        for name, data in files.items():
            zf.writestr(zipfile.ZipInfo(name, date), data, compress_type=compression)
    return path


def dist(name: str = "jobs_demo", version: str = "1.0", requires: str = "") -> dict[str, bytes]:
    meta = METADATA.format(name=name, version=version, requires=requires)
    return {
        f"{name}/__init__.py": b"def job(n):\n    return n\n",
        f"{name}-{version}.dist-info/METADATA": meta.encode(),
        f"{name}-{version}.dist-info/WHEEL": b"Wheel-Version: 1.0\nRoot-Is-Purelib: true\n",
    }


# --------------------------------------------------------------------------- digests and tag


def test_wheel_digest_follows_contents_not_timestamps_order_or_compression(tmp_path: Path) -> None:
    files = dist()
    one = jobpkgs.wheel_digest(make_wheel(tmp_path / "a.whl", files))
    later = make_wheel(tmp_path / "b.whl", files, date=(2025, 6, 30, 12, 0, 0))
    assert jobpkgs.wheel_digest(later) == one
    reordered = make_wheel(tmp_path / "c.whl", dict(reversed(list(files.items()))))
    assert jobpkgs.wheel_digest(reordered) == one
    stored = make_wheel(tmp_path / "d.whl", files, compression=zipfile.ZIP_STORED)
    assert jobpkgs.wheel_digest(stored) == one

    changed = {**files, "jobs_demo/__init__.py": b"def job(n):\n    return n + 1\n"}
    assert jobpkgs.wheel_digest(make_wheel(tmp_path / "e.whl", changed)) != one
    renamed = {k.replace("__init__", "core"): v for k, v in files.items()}
    assert jobpkgs.wheel_digest(make_wheel(tmp_path / "f.whl", renamed)) != one


def test_the_image_tag_changes_with_a_wheels_bytes_and_not_with_its_mtime(tmp_path: Path) -> None:
    wheel = make_wheel(tmp_path / "jobs_demo-1.0-py3-none-any.whl", dist())
    base = "sha256:" + "ab" * 32
    without = images_mod.content_tag(base)
    tag = images_mod.content_tag(base, [jobpkgs.wheel_digest(wheel)])
    assert tag != without and len(tag) == len(without)

    make_wheel(wheel, dist(), date=(2030, 2, 3, 4, 5, 6))  # rebuilt later, same contents
    assert images_mod.content_tag(base, [jobpkgs.wheel_digest(wheel)]) == tag
    make_wheel(wheel, dist(version="1.1"))
    assert images_mod.content_tag(base, [jobpkgs.wheel_digest(wheel)]) not in {tag, without}


def test_a_bad_zip_is_one_error_naming_the_file(tmp_path: Path) -> None:
    broken = tmp_path / "broken-1.0-py3-none-any.whl"
    broken.write_bytes(b"not a zip")
    with pytest.raises(ImagesError) as err:
        jobpkgs.wheel_digest(broken)
    assert str(err.value) == (
        "job package broken-1.0-py3-none-any.whl: not a readable wheel (File is not a zip file)"
        " — rebuild it with `pip wheel`"
    )


# --------------------------------------------------------------------------- labels and summary


def test_labels_list_name_equals_version_sorted_by_canonical_name() -> None:
    wheels = [
        jobpkgs.Wheel("Zeta_Jobs", "2.0", "z.whl"),
        jobpkgs.Wheel("alpha-jobs", "1.0", "a.whl"),
        jobpkgs.Wheel("numpy", "2.5.5", "n.whl"),
    ]
    assert jobpkgs.label_value(wheels) == "alpha-jobs==1.0,numpy==2.5.5,Zeta_Jobs==2.0"
    assert jobpkgs.label_value([]) == ""


def test_a_job_set_gives_the_dockerfile_its_labels_and_make_images_its_lines() -> None:
    jobset = jobpkgs.JobSet(
        Path("/x"),
        (jobpkgs.Wheel("taskfleet-primes", "1.0.0", "p.whl"),),
        (jobpkgs.Wheel("numpy", "2.5.5", "n.whl"),),
        ("d1", "d2"),
    )
    assert jobset.build_args() == {
        "JOB_PACKAGES": "taskfleet-primes==1.0.0",
        "JOB_DEPENDENCIES": "numpy==2.5.5",
    }
    assert jobset.versions() == {"taskfleet-primes": "1.0.0"}
    assert jobset.wheels == [Path("/x/p.whl"), Path("/x/n.whl")]
    assert jobset.summary() == [
        "   job packages: taskfleet-primes 1.0.0",
        "   their dependencies: numpy 2.5.5",
    ]
    assert jobpkgs.JobSet.from_json(Path("/x"), jobset.to_json()) == jobset
    empty = jobpkgs.JobSet()
    assert empty.wheels == [] and empty.build_args() == {"JOB_PACKAGES": "", "JOB_DEPENDENCIES": ""}
    assert empty.summary() == ["   job packages: none (JOBS= or taskfleet_job_packages adds yours)"]


# --------------------------------------------------------------------------- the target


def test_the_target_lists_every_manylinux_tag_its_glibc_runs_newest_first() -> None:
    tags = TRIXIE.platforms()
    assert tags[0] == "manylinux_2_41_x86_64" and tags[36] == "manylinux_2_5_x86_64"
    assert tags[37:] == ["manylinux2014_x86_64", "manylinux2010_x86_64", "manylinux1_x86_64"]
    arm = jobpkgs.Target((3, 13), "aarch64", (2, 36))
    assert arm.platforms()[-1] == "manylinux2014_aarch64"
    assert TRIXIE.describe() == "CPython 3.13 on manylinux_2_41_x86_64"
    args = TRIXIE.pip_args()
    assert args[:7] == [
        "--only-binary=:all:",
        "--implementation",
        "cp",
        "--python-version",
        "3.13",
        "--abi",
        "cp313",
    ]
    assert args.count("--platform") == len(tags)


@pytest.mark.parametrize(
    ("wheel", "fits"),
    [
        ("taskfleet_primes-1.0.0-py3-none-any.whl", True),
        ("docopt-0.6.2-py2.py3-none-any.whl", True),
        ("numpy-2.5.5-cp313-cp313-manylinux_2_27_x86_64.manylinux_2_28_x86_64.whl", True),
        ("PyYAML-6.0.2-cp313-cp313-manylinux_2_17_x86_64.manylinux2014_x86_64.whl", True),
        ("cryptography-44.0-cp39-abi3-manylinux_2_28_x86_64.whl", True),
        ("tool-1.0-py313-none-manylinux1_x86_64.whl", True),
        ("numpy-2.5.5-cp311-cp311-manylinux_2_28_x86_64.whl", False),  # another Python
        ("fast-1.0-cp313-cp313-linux_x86_64.whl", False),  # built for one machine only
        ("fast-1.0-cp313-cp313-manylinux_2_42_x86_64.whl", False),  # newer glibc
        ("fast-1.0-cp313-cp313-musllinux_1_2_x86_64.whl", False),  # musl
        ("fast-1.0-cp313-cp313-manylinux_2_28_aarch64.whl", False),  # another machine
        ("fast-1.0-cp313-cp313t-manylinux_2_28_x86_64.whl", False),  # free-threaded ABI
        ("not-a-wheel.zip", False),
    ],
)
def test_the_target_accepts_exactly_the_wheels_its_python_installs(wheel: str, fits: bool) -> None:
    assert TRIXIE.accepts(wheel) is fits


def test_a_base_without_cpython_on_glibc_is_refused_by_name() -> None:
    facts = {"implementation": "cpython", "version": [3, 13], "machine": "x86_64"}
    assert jobpkgs.Target.from_probe("b", {**facts, "libc": "glibc 2.41"}) == TRIXIE
    with pytest.raises(ImagesError) as err:
        jobpkgs.Target.from_probe("alpine-py", {**facts, "libc": ""})
    assert str(err.value) == (
        "base image alpine-py has cpython with no glibc: job packages need CPython on glibc "
        "(manylinux wheels) — use taskfleet-base (leave BASE_IMAGE empty) or a Debian-based "
        "python image"
    )


# --------------------------------------------------------------------------- JOBS entries


def project(root: Path, name: str = "jobs_demo") -> Path:
    (root / "src" / name).mkdir(parents=True)
    (root / "pyproject.toml").write_text(f'[project]\nname = "{name}"\nversion = "1.0"\n')
    (root / "src" / name / "__init__.py").write_text("def job(n):\n    return n\n")
    return root


def test_jobs_entries_are_project_folders_or_wheels_relative_to_the_working_folder(
    tmp_path: Path,
) -> None:
    project(tmp_path / "examples" / "demo")
    (tmp_path / "dist").mkdir()
    wheel = make_wheel(tmp_path / "dist" / "x-1.0-py3-none-any.whl", dist("x"))
    sources = jobpkgs.parse_sources(["examples/demo", str(wheel)], tmp_path)
    assert [(s.given, s.kind) for s in sources] == [
        ("examples/demo", "project"),
        (str(wheel), "wheel"),
    ]
    assert sources[0].path == tmp_path / "examples" / "demo"


@pytest.mark.parametrize(
    ("entry", "message"),
    [
        (
            "docs",
            "job package docs: no pyproject.toml in {root}/docs — give the project's root "
            "folder (where its pyproject.toml is), or build a wheel and give the .whl",
        ),
        (
            "missing/project",
            "job package missing/project: {root}/missing/project does not exist — JOBS takes "
            "project folders (with a pyproject.toml) and .whl files",
        ),
        (
            "docs/notes.txt",
            "job package docs/notes.txt: not a folder or a .whl file — JOBS takes project "
            "folders (with a pyproject.toml) and .whl files",
        ),
    ],
)
def test_a_bad_jobs_entry_is_one_line_naming_it_and_the_fix(
    tmp_path: Path, entry: str, message: str
) -> None:
    (tmp_path / "docs").mkdir()
    (tmp_path / "docs" / "notes.txt").write_text("x")
    with pytest.raises(ImagesError) as err:
        jobpkgs.parse_sources([entry], tmp_path)
    assert str(err.value) == message.format(root=tmp_path)


def test_a_package_named_twice_is_refused(tmp_path: Path) -> None:
    project(tmp_path / "demo")
    with pytest.raises(ImagesError) as err:
        jobpkgs.parse_sources(["demo", "./demo/"], tmp_path)
    assert str(err.value) == (
        "job package ./demo/: named twice (also as demo) — list each job package once"
    )


def test_only_the_files_that_can_shape_a_wheel_count(tmp_path: Path) -> None:
    root = project(tmp_path / "demo")
    for junk in [
        ".git/HEAD",
        ".venv/bin/python",
        "build/lib/jobs_demo/__init__.py",
        "dist/jobs_demo-1.0.whl",
        "src/jobs_demo/__pycache__/x.cpython-313.pyc",
        "src/jobs_demo.egg-info/PKG-INFO",
        "src/jobs_demo/stale.pyc",
    ]:
        (root / junk).parent.mkdir(parents=True, exist_ok=True)
        (root / junk).write_text("x")
    (root / "src" / "jobs_demo" / "build").mkdir()  # a subpackage may be called build
    (root / "src" / "jobs_demo" / "build" / "__init__.py").write_text("")
    assert [name for name, _ in jobpkgs.project_files(root)] == [
        "pyproject.toml",
        "src/jobs_demo/__init__.py",
        "src/jobs_demo/build/__init__.py",
    ]
    source = jobpkgs.parse_sources(["demo"], tmp_path)[0]
    key = jobpkgs.cache_key([source], TRIXIE)
    (root / "build" / "more.txt").write_text("build output")
    assert jobpkgs.cache_key([source], TRIXIE) == key
    (root / "src" / "jobs_demo" / "__init__.py").write_text("def job(n):\n    return -n\n")
    assert jobpkgs.cache_key([source], TRIXIE) != key
    other = jobpkgs.Target((3, 12), "x86_64", (2, 36))
    assert jobpkgs.cache_key([source], other) != jobpkgs.cache_key([source], TRIXIE)


# --------------------------------------------------------------------------- metadata and checks


def test_wheel_metadata_gives_name_version_and_requirements(tmp_path: Path) -> None:
    requires = "Requires-Dist: numpy>=2\nRequires-Dist: Tasks_Lib[fast]; python_version>'3'"
    wheel = make_wheel(tmp_path / "w.whl", dist("jobs_demo", "1.2", requires))
    name, version, reqs = jobpkgs.wheel_metadata(wheel)
    assert (name, version) == ("jobs_demo", "1.2")
    assert [jobpkgs.requirement_name(r) for r in reqs] == ["numpy", "tasks-lib"]


@pytest.mark.parametrize(
    ("name", "requires", "what"),
    [
        ("taskfleet", "", "is taskfleet itself"),
        ("jobs_demo", "Requires-Dist: TaskFleet>=0.2", "depends on taskfleet"),
    ],
)
def test_a_job_package_may_not_bring_its_own_taskfleet(
    tmp_path: Path, name: str, requires: str, what: str
) -> None:
    file = f"{name}-1.0-py3-none-any.whl"
    wheel = make_wheel(tmp_path / file, dist(name, "1.0", requires))
    meta = jobpkgs.wheel_metadata(wheel)
    src = jobpkgs.Source("pkgs/demo", tmp_path, "project")
    with pytest.raises(ImagesError) as err:
        jobpkgs._check_package(src, meta[0], meta[2], TRIXIE, file, {})
    assert str(err.value) == (
        f"job package pkgs/demo: {what} — remove taskfleet from its dependencies: the images "
        "already have the taskfleet that made them"
    )


def test_a_wheel_for_another_python_is_refused_before_any_download(tmp_path: Path) -> None:
    src = jobpkgs.Source("dist/fast.whl", tmp_path, "wheel")
    with pytest.raises(ImagesError) as err:
        jobpkgs._check_package(src, "fast", [], TRIXIE, "fast-1.0-cp311-cp311-linux_x86_64.whl", {})
    assert str(err.value) == (
        "job package dist/fast.whl: its wheel fast-1.0-cp311-cp311-linux_x86_64.whl does not fit "
        "the images' CPython 3.13 on manylinux_2_41_x86_64 — give a pure-Python project, or a "
        "wheel built for that Python and manylinux (e.g. with cibuildwheel)"
    )


# --------------------------------------------------------------------------- pip's errors

NO_WHEEL = (
    "WARNING: Skipping page https://index.example/simple/docopt/ because of a retry.\n"
    "ERROR: Could not find a version that satisfies the requirement docopt (from nowheel)"
    " (from versions: none)\n"
    "ERROR: No matching distribution found for docopt (from nowheel)\n"
)

BACKEND_FAILED = """\
  error: subprocess-exited-with-error

  \u00d7 Getting requirements to build wheel did not run successfully.
  \u2502 exit code: 1
  \u2570\u2500> [1 lines of output]
      compiler not found: gcc
      [end of output]

  note: This error originates from a subprocess, and is likely not a problem with pip.
ERROR: Failed to build 'file:///tmp/bad' when getting requirements to build wheel
"""

BAD_TOML = """\
ERROR: Exception:
Traceback (most recent call last):
  File "pip/_internal/pyproject.py", line 64, in load_pyproject_toml
tomllib.TOMLDecodeError: Invalid value (at end of document)
"""


@pytest.mark.parametrize(
    ("stderr", "line"),
    [
        (BACKEND_FAILED, "compiler not found: gcc"),
        (BAD_TOML, "tomllib.TOMLDecodeError: Invalid value (at end of document)"),
        (NO_WHEEL, "ERROR: No matching distribution found for docopt (from nowheel)"),
        ("", "no output"),
    ],
)
def test_the_telling_line_of_pips_output_is_picked(stderr: str, line: str) -> None:
    assert jobpkgs._last_error(stderr) == line


def test_a_dependency_without_a_wheel_names_the_job_package_and_the_fix(tmp_path: Path) -> None:
    sources = [jobpkgs.Source("examples/nowheel", tmp_path, "project")]
    packages = [jobpkgs.Wheel("nowheel", "0.1", "nowheel-0.1-py3-none-any.whl")]
    error = jobpkgs._resolution_error(
        NO_WHEEL, sources, packages, {"nowheel": sources[0]}, TRIXIE, tmp_path, tmp_path
    )
    assert str(error) == (
        "job package examples/nowheel: its dependency docopt has no wheel for the images' "
        "CPython 3.13 on manylinux_2_41_x86_64 — require a version of docopt that ships one, "
        "or build its wheel (pip wheel --no-deps docopt) and add the .whl to JOBS"
    )

"""The engine helpers the image builds and the lab share: hash, lock, atomic write, errors."""

from __future__ import annotations

import subprocess
import sys
import threading
import time
from pathlib import Path

import docker.errors
import pytest

from taskfleet.ops import engine
from taskfleet.ops.errors import ImagesError, LabError


def tree(root: Path, files: dict[str, str]) -> Path:
    for name, text in files.items():
        (root / name).parent.mkdir(parents=True, exist_ok=True)
        (root / name).write_text(text)
    return root


def test_tree_hash_follows_bytes_names_modes_and_extras(tmp_path: Path) -> None:
    root = tree(tmp_path / "ctx", {"Dockerfile": "FROM x\n", "rootfs/etc/motd": "hi\n"})
    tag = engine.tree_hash(engine.files_under(root), "sha256:base")
    assert len(tag) == engine.HASH_LEN
    assert engine.tree_hash(engine.files_under(root), "sha256:base") == tag  # deterministic
    assert engine.tree_hash(engine.files_under(root), "sha256:other") != tag

    (root / "rootfs/etc/motd").chmod(0o600)
    by_mode = engine.tree_hash(engine.files_under(root), "sha256:base")
    assert by_mode != tag
    (root / "rootfs/etc/motd").write_text("hi!\n")
    by_bytes = engine.tree_hash(engine.files_under(root), "sha256:base")
    assert by_bytes not in {tag, by_mode}
    (root / "rootfs/etc/motd").rename(root / "rootfs/etc/issue")
    assert engine.tree_hash(engine.files_under(root), "sha256:base") not in {tag, by_mode, by_bytes}


def test_files_under_lists_files_only_sorted_with_a_prefix(tmp_path: Path) -> None:
    root = tree(tmp_path, {"b": "", "a/z": "", "a/y": ""})
    (root / "empty").mkdir()
    assert [name for name, _ in engine.files_under(root, "images/x/")] == [
        "images/x/a/y",
        "images/x/a/z",
        "images/x/b",
    ]


def test_write_atomic_replaces_the_file_with_its_mode_and_leaves_no_temporary(
    tmp_path: Path,
) -> None:
    path = tmp_path / "new" / "dir" / "hosts.yml"
    engine.write_atomic(path, "one\n")
    engine.write_atomic(path, "two\n", mode=0o600)
    assert path.read_text() == "two\n"
    assert path.stat().st_mode & 0o777 == 0o600
    assert [p.name for p in path.parent.iterdir()] == ["hosts.yml"]


def test_a_failed_atomic_write_keeps_the_old_file(tmp_path: Path) -> None:
    path = tmp_path / "images.json"
    engine.write_atomic(path, "old\n")
    with pytest.raises(TypeError):
        engine.write_atomic(path, b"not text")  # type: ignore[arg-type]
    assert path.read_text() == "old\n"
    assert [p.name for p in tmp_path.iterdir()] == ["images.json"]


def test_the_file_lock_is_reentrant_in_one_thread(tmp_path: Path) -> None:
    lines: list[str] = []
    lock = tmp_path / ".build.lock"
    with engine.file_lock(lock, "waiting", lines.append):
        with engine.file_lock(lock, "waiting", lines.append):
            pass
        # still held: another process cannot take it
        probe = subprocess.run(
            [
                sys.executable,
                "-c",
                "import fcntl, sys; f = open(sys.argv[1], 'w'); "
                "fcntl.flock(f, fcntl.LOCK_EX | fcntl.LOCK_NB)",
                str(lock),
            ],
            capture_output=True,
            text=True,
            check=False,
        )
        assert probe.returncode != 0 and "BlockingIOError" in probe.stderr
    assert lines == []


def test_a_second_holder_says_it_waits_then_gets_the_lock(tmp_path: Path) -> None:
    lock = tmp_path / ".lab.lock"
    lines: list[str] = []
    order: list[str] = []
    held = threading.Event()
    release = threading.Event()

    def first() -> None:
        with engine.file_lock(lock, "first waits", lines.append):
            order.append("first in")
            held.set()
            release.wait(10)
            order.append("first out")

    thread = threading.Thread(target=first)
    thread.start()
    assert held.wait(10)
    threading.Timer(0.3, release.set).start()
    with engine.file_lock(lock, "   waiting for another up/down to finish", lines.append):
        order.append("second in")
    thread.join(10)
    assert order == ["first in", "first out", "second in"]
    assert lines == ["   waiting for another up/down to finish"]


def test_no_engine_is_one_line_in_the_callers_terms(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("DOCKER_HOST", "unix:///nonexistent/docker.sock")
    started = time.monotonic()
    with pytest.raises(LabError) as info:
        engine.connect(LabError)
    assert time.monotonic() - started < 30
    assert str(info.value) == (
        "the Docker engine does not answer — start it (dockerd, or systemctl start docker)"
    )
    with pytest.raises(ImagesError):
        engine.connect(ImagesError)


def test_an_unexpected_docker_failure_becomes_one_line() -> None:
    with pytest.raises(LabError) as info, engine.docker_errors(LabError):
        raise docker.errors.DockerException("500 Server Error: boom\ndetails on line two")
    assert str(info.value) == (
        "Docker: 500 Server Error: boom — check `docker info`, then run the command again"
    )

"""The images as built by `make images`: names, content tags, metadata, the base, save."""

from __future__ import annotations

import datetime as dt
import json
import os
import re
import shutil
import tarfile
import tomllib
from dataclasses import asdict
from pathlib import Path

import docker
import pytest

from taskfleet.ops import images as images_mod


def run_once(client: docker.DockerClient, image: str, command: list[str], **kw: object) -> str:
    """Run a container to completion and return its output. Removed with its
    anonymous volumes (the master image declares one): the SDK's remove=True
    would leave them behind."""
    container = client.containers.run(image, command, detach=True, **kw)
    try:
        result = container.wait(timeout=120)
        out = container.logs().decode()
        assert result["StatusCode"] == 0, out
        return out
    finally:
        container.remove(force=True, v=True)


REPO = images_mod.REPO
OURS = not os.environ.get("BASE_IMAGE")


def test_images_json_names_both_images_and_the_tag_is_the_content_hash(
    built_images: images_mod.ImageSet, docker_client: docker.DockerClient
) -> None:
    data = json.loads((REPO / ".build" / "images.json").read_text())
    assert data == asdict(built_images)
    assert data["master"] == f"taskfleet-master:{data['tag']}"
    assert data["worker"] == f"taskfleet-worker:{data['tag']}"
    base_id = docker_client.images.get(built_images.base).id
    assert data["tag"] == images_mod.content_tag(base_id)
    if OURS:
        assert data["base"] == f"taskfleet-base:{images_mod.base_hash()}"


def test_unchanged_inputs_skip_the_build_and_keep_the_image_ids(
    built_images: images_mod.ImageSet, docker_client: docker.DockerClient
) -> None:
    before = [docker_client.images.get(n).id for n in (built_images.master, built_images.worker)]
    lines: list[str] = []
    again = images_mod.build_images(
        os.environ.get("BASE_IMAGE") or None, client=docker_client, log=lines.append
    )
    assert again == built_images
    assert [docker_client.images.get(n).id for n in (again.master, again.worker)] == before
    assert any("nothing to do" in ln and built_images.master in ln for ln in lines), lines
    assert not any("docker build" in ln for ln in lines), lines


def _copy_inputs(dst: Path) -> None:
    shutil.copy2(REPO / "pyproject.toml", dst / "pyproject.toml")
    shutil.copytree(REPO / "src" / "taskfleet", dst / "src" / "taskfleet")
    shutil.copytree(REPO / "images" / "taskfleet", dst / "images" / "taskfleet")
    (dst / "README.md").write_text("readme\n")


def test_tag_follows_runtime_dockerfile_and_base_but_not_ops_or_readme(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    _copy_inputs(tmp_path)
    monkeypatch.setattr(images_mod, "REPO", tmp_path)
    monkeypatch.setattr(images_mod, "IMAGE_DIR", tmp_path / "images" / "taskfleet")
    tag = images_mod.content_tag("sha256:aaaa")
    assert images_mod.content_tag("sha256:aaaa") == tag  # deterministic
    assert images_mod.content_tag("sha256:bbbb") != tag  # another base → another tag

    (tmp_path / "README.md").write_text("edited docs\n")
    (tmp_path / "src" / "taskfleet" / "ops" / "images.py").write_text("# control-node only\n")
    assert images_mod.content_tag("sha256:aaaa") == tag

    dockerfile = tmp_path / "images" / "taskfleet" / "Dockerfile"
    dockerfile.write_text(dockerfile.read_text() + "\n# edited\n")
    tag2 = images_mod.content_tag("sha256:aaaa")
    assert tag2 != tag

    cli = tmp_path / "src" / "taskfleet" / "cli.py"
    cli.write_text(cli.read_text() + "\n# edited\n")
    assert images_mod.content_tag("sha256:aaaa") not in {tag, tag2}


@pytest.mark.parametrize("role", ["master", "worker"])
def test_image_config_non_root_tini_healthcheck_oci_labels(
    built_images: images_mod.ImageSet, docker_client: docker.DockerClient, role: str
) -> None:
    image = docker_client.images.get(getattr(built_images, role))
    config = image.attrs["Config"]
    assert config["User"] == "10001:10001"
    assert config["Entrypoint"] == ["/usr/bin/tini", "--", "taskfleet"]
    assert config["Cmd"][0] == role
    health = " ".join(config["Healthcheck"]["Test"])
    assert f"taskfleet healthcheck {role}" in health
    assert config["Healthcheck"]["Interval"] == 30_000_000_000  # production default
    labels = config["Labels"]
    version = tomllib.loads((REPO / "pyproject.toml").read_text())["project"]["version"]
    assert labels["org.opencontainers.image.version"] == version
    # The commit the image was built from (an earlier one when the tag was reused),
    # "-dirty" for uncommitted runtime edits, "unknown" outside a git checkout.
    revision = labels["org.opencontainers.image.revision"]
    if images_mod._git("rev-parse", "HEAD"):
        assert re.fullmatch(r"[0-9a-f]{40}(-dirty)?", revision), revision
    else:
        assert revision == "unknown"
    created = dt.datetime.strptime(labels["org.opencontainers.image.created"], "%Y-%m-%dT%H:%M:%SZ")
    assert abs(created.year - dt.datetime.now().year) <= 1
    assert "org.opencontainers.image.source" in labels
    assert labels["io.taskfleet.managed"] == "true"
    assert labels["io.taskfleet.role"] == role
    assert image.attrs["Size"] <= 200_000_000, "the issue's size budget is 200 MB per image"
    if role == "master":
        assert "/var/lib/taskfleet" in config["Volumes"]
        assert config["Env"].count("TASKFLEET_HEALTH_ADDR=127.0.0.1:7451") == 1
    out = run_once(
        docker_client,
        image.id,
        ["stat -c '%u:%g %a' /var/lib/taskfleet; python3 -c 'import taskfleet'; id -u"],
        entrypoint=["/bin/sh", "-c"],
        labels={"io.taskfleet.managed": "true", "io.taskfleet.test": "containers-config"},
    )
    assert out.split() == ["10001:10001", "750", "10001"]


@pytest.mark.skipif(not OURS, reason="BASE_IMAGE replaces taskfleet-base")
def test_base_is_a_trimmed_trixie_with_python_313_and_tini(
    built_images: images_mod.ImageSet, docker_client: docker.DockerClient
) -> None:
    script = "; ".join(
        [
            ". /etc/os-release; echo codename=$VERSION_CODENAME",
            "echo python=$(/usr/bin/python3 -c 'import sys; print(sys.version[:4])')",
            "echo tini=$(test -x /usr/bin/tini && echo yes)",
            "echo docs=$(find /usr/share/doc -type f ! -name copyright | wc -l)",
            "echo man=$(find /usr/share/man /usr/share/info -type f | wc -l)",
            "echo locales=$(find /usr/share/locale -mindepth 1 | wc -l)",
            "echo apt_lists=$(find /var/lib/apt/lists -type f | wc -l)",
            "echo debs=$(find /var/cache/apt -name '*.deb' | wc -l)",
        ]
    )
    out = run_once(
        docker_client,
        built_images.base,
        ["/bin/sh", "-c", script],
        labels={"io.taskfleet.managed": "true", "io.taskfleet.test": "containers-base"},
    )
    facts = dict(line.split("=", 1) for line in out.split())
    assert facts == {
        "codename": "trixie",
        "python": "3.13",
        "tini": "yes",
        "docs": "0",
        "man": "0",
        "locales": "0",
        "apt_lists": "0",
        "debs": "0",
    }


def test_save_writes_one_tarball_with_both_images_and_reuses_it(
    built_images: images_mod.ImageSet,
) -> None:
    lines: list[str] = []
    path = images_mod.save_images(built_images, log=lines.append)
    assert path == REPO / ".build" / f"taskfleet-images-{built_images.tag}.tar"
    with tarfile.open(path) as tar:
        manifest = json.load(tar.extractfile("manifest.json"))  # type: ignore[arg-type]
    tags = sorted(t for entry in manifest for t in entry["RepoTags"])
    assert tags == sorted([built_images.master, built_images.worker])
    mtime = path.stat().st_mtime_ns
    lines.clear()
    assert images_mod.save_images(built_images, log=lines.append) == path
    assert path.stat().st_mtime_ns == mtime
    assert any("reusing" in ln for ln in lines), lines

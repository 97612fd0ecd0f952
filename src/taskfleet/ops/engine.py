"""What the image builds and the lab both need from the local Docker engine and disk.

* :func:`connect`: a client for the local engine, or the one-line error that
  says how to start it;
* :func:`build`: one legacy-builder ``docker build`` whose failure is one line
  with the last lines of its output;
* :func:`tree_hash`: the content hash that tags an image by what goes into it;
* :func:`file_lock`: one build (or one lab ``up``/``down``) at a time per machine;
* :func:`write_atomic`: a file that readers never see half-written;
* :func:`network_subnets`: which subnets the engine's networks use (a new lab avoids them).

Each function raises the error class its caller passes (``LabError``,
``ImagesError``), so an entry point reports what failed in its own terms.
"""

from __future__ import annotations

import contextlib
import fcntl
import hashlib
import os
import tempfile
import threading
from collections.abc import Callable, Iterable, Iterator
from pathlib import Path

import docker
import docker.errors

from taskfleet.ops.errors import OpsError

#: The repository (the control node's checkout): images/, inventory/, .build/, .lab/.
REPO = Path(__file__).resolve().parents[3]

#: Image builds and imports stream large bodies for minutes: the SDK's 60 s is too short.
ENGINE_TIMEOUT_S = 900
#: Hex digits of a content hash in an image tag.
HASH_LEN = 12
#: Output lines kept to explain a failed build.
BUILD_TAIL = 20

Log = Callable[[str], None]


def connect(error: type[OpsError] = OpsError) -> docker.DockerClient:
    """A client for the local engine (``DOCKER_HOST`` honoured).

    Raises ``error`` saying how to start the engine when it does not answer.
    """
    try:
        client = docker.from_env(timeout=ENGINE_TIMEOUT_S)
        client.ping()
    except docker.errors.DockerException:
        raise error(
            "the Docker engine does not answer", "start it (dockerd, or systemctl start docker)"
        ) from None
    return client


@contextlib.contextmanager
def docker_errors(error: type[OpsError]) -> Iterator[None]:
    """Turn an unexpected Docker SDK failure into one ``error`` line naming the next step."""
    try:
        yield
    except docker.errors.DockerException as exc:
        first = (str(exc).splitlines() or [type(exc).__name__])[0][:200]
        raise error(f"Docker: {first}", "check `docker info`, then run the command again") from None


def api_error(exc: docker.errors.APIError) -> str:
    """The engine's own explanation of a refused call, first line only."""
    return str(exc.explanation or exc).strip().splitlines()[0][:200]


def image_id(client: docker.DockerClient, name: str) -> str | None:
    """The image ID of ``name`` in the engine, or None when it is absent."""
    try:
        return str(client.images.get(name).id)
    except docker.errors.ImageNotFound:
        return None


def build(
    client: docker.DockerClient,
    context: Path,
    tag: str,
    *,
    buildargs: dict[str, str],
    error: type[OpsError],
    what: str,
    fix: str,
    target: str | None = None,
    log: Log | None = None,
) -> None:
    """Build ``context`` into ``tag`` (legacy builder, no pull, intermediates removed).

    With ``log``, each step that ran is printed (``[<target>] Step …``) and the
    steps taken from the build cache are counted in one line. A failed build
    raises ``error("<what> failed: <engine error> (last output: …)", fix)``.
    """
    label = f"[{target or tag}]"
    tail: list[str] = []
    pending = ""  # a step is printed once we know it did not come from the cache
    cached = 0
    options = {"target": target} if target else {}
    stream = client.api.build(
        path=str(context),
        tag=tag,
        buildargs=buildargs,
        rm=True,
        forcerm=True,
        pull=False,
        decode=True,
        **options,
    )
    for chunk in stream:
        if "error" in chunk:
            detail = str(chunk["error"]).strip().splitlines()[-1]
            last = " | ".join(tail[-3:])
            raise error(f"{what} failed: {detail[:200]} (last output: {last[:300]})", fix)
        text = str(chunk.get("stream", "")).strip()
        if not text:
            continue
        tail.extend(text.splitlines())
        del tail[:-BUILD_TAIL]
        if log is None:
            continue
        if pending and "Using cache" in text:
            cached += 1
        elif pending:
            log(f"   {label} {pending[:110]}")
        pending = text if text.startswith("Step ") else ""
    if log is not None and cached:
        log(f"   {label} {cached} steps from the build cache")


def prune_superseded(client: docker.DockerClient, repository: str, keep: str, log: Log) -> None:
    """Remove every other tag of ``repository`` than ``keep``: older builds are dead weight.

    The engine refuses (and this skips) a tag that a container still uses.
    """
    for image in client.images.list(name=repository):
        for old in image.tags:
            if old != keep:
                with contextlib.suppress(docker.errors.APIError):
                    client.images.remove(old)
                    log(f"   image {old}: removed (superseded)")


def files_under(directory: Path, prefix: str = "") -> Iterator[tuple[str, Path]]:
    """``(prefix + relative path, path)`` of every file below ``directory``, sorted."""
    for path in sorted(directory.rglob("*")):
        if path.is_file():
            yield prefix + path.relative_to(directory).as_posix(), path


def tree_hash(files: Iterable[tuple[str, Path]], *extra: str) -> str:
    """Content hash of named files (name, permission bits, bytes) and ``extra`` strings.

    What a build copies in decides the hash, so an unchanged input gives the same
    tag and the build is skipped; a changed byte, mode or name gives a new one.
    """
    digest = hashlib.sha256("\0".join(extra).encode())
    for name, path in files:
        digest.update(f"\0{name}\0{path.stat().st_mode & 0o777:o}\0".encode())
        digest.update(path.read_bytes())
    return digest.hexdigest()[:HASH_LEN]


# Lock path → the thread holding it, so that thread may take its lock again.
_holders: dict[Path, int] = {}


@contextlib.contextmanager
def file_lock(path: Path, waiting: str, log: Log) -> Iterator[None]:
    """Hold an exclusive ``flock`` on ``path`` (created if needed) for the block.

    Another process or thread holding it makes this one log ``waiting`` once and
    wait. Re-entrant within a thread: a build that holds the lock may call a step
    that takes it too (the inner block ends before the outer one releases it).
    """
    key = path.resolve()
    me = threading.get_ident()
    if _holders.get(key) == me:
        yield
        return
    path.parent.mkdir(parents=True, exist_ok=True)
    with path.open("w") as handle:
        # flock locks belong to the open file: other threads of this process wait too.
        try:
            fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            log(waiting)
            fcntl.flock(handle, fcntl.LOCK_EX)
        _holders[key] = me
        try:
            yield
        finally:
            del _holders[key]
            fcntl.flock(handle, fcntl.LOCK_UN)


def write_atomic(path: Path, text: str, mode: int = 0o644) -> None:
    """Replace ``path`` with ``text`` in one rename (parents created; ``mode`` applied)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.")
    try:
        with os.fdopen(fd, "w") as out:
            out.write(text)
        os.chmod(tmp, mode)
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def network_subnets(client: docker.DockerClient) -> dict[str, list[str]]:
    """Every Docker network's name → the subnets of its address pools."""
    return {
        str(net.name): [
            str(pool["Subnet"])
            for pool in (net.attrs.get("IPAM") or {}).get("Config") or []
            if pool.get("Subnet")
        ]
        for net in client.networks.list()
    }

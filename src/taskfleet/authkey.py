"""The authkey file: generate it, load it, refuse unsafe ones.

The key opens the board (and so runs any installed job function), so it is only ever read
from a file — never argv or the environment — and never logged. Keys are
stored as hex text (easy to vault and copy); the key bytes are the file's
content without surrounding whitespace, so keys made by other tools work too.
"""

from __future__ import annotations

import os
import secrets
import stat

from taskfleet.errors import AuthkeyError

MIN_BYTES = 32
KEYGEN_RANDOM_BYTES = 32


def keygen(path: str, force: bool = False) -> None:
    """Write a new random key (32 random bytes, hex) with mode 0600.

    Raises AuthkeyError if the file exists and ``force`` is false.
    """
    if os.path.lexists(path) and not force:
        raise AuthkeyError(
            f"{path} already exists",
            "keep it (every host must share one key) or pass --force to replace it",
        )
    data = (secrets.token_hex(KEYGEN_RANDOM_BYTES) + "\n").encode()
    directory = os.path.dirname(os.path.abspath(path))
    tmp = os.path.join(directory, f".{os.path.basename(path)}.{os.getpid()}.tmp")
    try:
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        try:
            os.write(fd, data)
            os.fsync(fd)
        finally:
            os.close(fd)
        os.chmod(tmp, 0o600)  # umask cannot widen it, but be explicit
        os.replace(tmp, path)
    except OSError as exc:
        try:
            os.unlink(tmp)
        except OSError:
            pass
        raise AuthkeyError(
            f"cannot write {path}: {exc.strerror}",
            "choose a writable path (the directory must exist)",
        ) from None


def load(path: str) -> bytes:
    """Read and check an authkey file; raise AuthkeyError with the fix."""
    if not path:
        raise AuthkeyError(
            "no authkey file given",
            "pass --authkey-file PATH or set TASKFLEET_AUTHKEY_FILE"
            " (make one with taskfleet keygen PATH)",
        )
    try:
        st = os.stat(path)
    except FileNotFoundError:
        raise AuthkeyError(
            f"authkey file {path} does not exist",
            f"create it with taskfleet keygen {path} and copy it to every host",
        ) from None
    except OSError as exc:
        raise AuthkeyError(
            f"cannot read authkey file {path}: {exc.strerror}",
            "run as a user that can read it",
        ) from None
    if not stat.S_ISREG(st.st_mode):
        raise AuthkeyError(
            f"authkey file {path} is not a regular file", f"create it with taskfleet keygen {path}"
        )
    if st.st_mode & (stat.S_IROTH | stat.S_IWOTH):
        raise AuthkeyError(
            f"authkey file {path} is accessible by every user"
            f" (mode {stat.S_IMODE(st.st_mode):04o})",
            f"chmod 600 {path}",
        )
    try:
        with open(path, "rb") as fh:
            key = fh.read(4096).strip()
    except OSError as exc:
        raise AuthkeyError(
            f"cannot read authkey file {path}: {exc.strerror}",
            "run as a user that can read it (containers: owner uid 10001, mode 0400)",
        ) from None
    if len(key) < MIN_BYTES:
        raise AuthkeyError(
            f"authkey file {path} holds {len(key)} bytes, fewer than {MIN_BYTES}",
            f"generate a strong key with taskfleet keygen {path} --force",
        )
    return key

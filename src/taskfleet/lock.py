"""One master per journal: an exclusive OS file lock beside the journal file.

A master takes ``<journal>.lock`` with ``flock(LOCK_EX | LOCK_NB)`` before it
opens the journal and holds it until it stops. The kernel drops the lock when
the process ends however it ends (``kill -9`` included), so a stale lock file
never blocks a restart: only a live holder does. The holder writes who it is
(pid, host, since when) into the file, so a second master is refused in one
line that names the first.

Why a separate file and ``flock``: SQLite takes POSIX (``fcntl``) byte-range
locks on the journal itself, and a process loses *all* its POSIX locks on a
file when it closes *any* descriptor of it — a lock of ours on the journal
would come and go with SQLite's connections. ``flock`` locks belong to the open
file description instead, and live on a file SQLite never touches.
"""

from __future__ import annotations

import fcntl
import json
import os
import socket
import time
from typing import Any

from taskfleet.errors import JournalError, JournalInUse

LOCK_SUFFIX = ".lock"


def lock_path(journal: str) -> str:
    """The lock file of a journal (symlinks resolved: two names, one journal, one lock)."""
    return os.path.realpath(journal) + LOCK_SUFFIX


def holder(journal: str) -> dict[str, Any] | None:
    """Who holds the journal's lock now (pid, host, since), or None when nobody does.

    Takes the lock for an instant to find out, so call it only where no master
    could be starting on this journal at the same moment, or accept the race.
    """
    path = lock_path(journal)
    try:
        fd = os.open(path, os.O_RDONLY | os.O_CLOEXEC)
    except OSError:
        return None
    try:
        try:
            fcntl.flock(fd, fcntl.LOCK_SH | fcntl.LOCK_NB)
        except BlockingIOError:
            return _read(fd)
        fcntl.flock(fd, fcntl.LOCK_UN)
        return None
    finally:
        os.close(fd)


def _read(fd: int) -> dict[str, Any]:
    try:
        data = json.loads(os.pread(fd, 4096, 0) or b"{}")
    except (OSError, ValueError):
        return {}
    return data if isinstance(data, dict) else {}


def describe(info: dict[str, Any]) -> str:
    """``pid 123 on host m1, since 2025-01-02 03:04:05`` (what is known of a holder)."""
    parts = []
    if info.get("pid"):
        parts.append(f"pid {info['pid']}")
    if info.get("host"):
        parts.append(f"on host {info['host']}")
    text = " ".join(parts)
    if isinstance(info.get("since"), int | float):
        since = time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(info["since"]))
        text = f"{text}, since {since}" if text else f"since {since}"
    return text or "pid and host unknown"


class JournalLock:
    """The lock on one journal. ``acquire()`` once, ``release()`` when the master stops."""

    def __init__(self, journal: str) -> None:
        self.journal = journal
        self.path = lock_path(journal)
        self._fd: int | None = None

    def acquire(self) -> None:
        """Take the lock, or raise JournalInUse naming the holder (JournalError when the
        lock file cannot be created)."""
        try:
            fd = os.open(self.path, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o600)
        except OSError as exc:
            raise JournalError(
                f"cannot create the journal's lock file {self.path}: {exc.strerror}",
                "give a --journal path in a writable directory",
            ) from None
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            info = _read(fd)
            os.close(fd)
            raise JournalInUse(
                f"journal {self.journal} is in use by another master ({describe(info)})",
                "stop that master first, or give this one another --journal",
            ) from None
        except OSError as exc:
            os.close(fd)
            raise JournalError(
                f"cannot lock {self.path}: {exc.strerror}",
                "put the journal on a local file system",
            ) from None
        me = {"pid": os.getpid(), "host": socket.gethostname(), "since": round(time.time(), 3)}
        os.ftruncate(fd, 0)
        os.pwrite(fd, json.dumps(me).encode(), 0)
        self._fd = fd

    def release(self) -> None:
        """Let go of the lock (the file stays: it is reused by the next master)."""
        if self._fd is not None:
            os.close(self._fd)
            self._fd = None

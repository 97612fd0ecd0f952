"""One master per journal: the lock file, its holder, and its release."""

from __future__ import annotations

import json
import os
import socket
from pathlib import Path

import pytest

from taskfleet import lock
from taskfleet.errors import JournalInUse
from taskfleet.lock import JournalLock


def test_a_second_lock_on_the_same_journal_is_refused_naming_the_holder(tmp_path: Path) -> None:
    journal = str(tmp_path / "j.db")
    first = JournalLock(journal)
    first.acquire()
    try:
        with pytest.raises(JournalInUse) as err:
            JournalLock(journal).acquire()
        host = socket.gethostname()
        assert str(err.value).startswith(
            f"journal {journal} is in use by another master (pid {os.getpid()} on host {host},"
            " since "
        )
        assert str(err.value).endswith(
            ") — stop that master first, or give this one another --journal"
        )
        assert lock.holder(journal) == json.loads(Path(first.path).read_text())
    finally:
        first.release()
    second = JournalLock(journal)
    second.acquire()  # released: free again
    second.release()
    assert lock.holder(journal) is None


def test_two_names_of_one_journal_share_one_lock(tmp_path: Path) -> None:
    (tmp_path / "real").mkdir()
    (tmp_path / "alias").symlink_to(tmp_path / "real")
    first = JournalLock(str(tmp_path / "real" / "j.db"))
    first.acquire()
    try:
        with pytest.raises(JournalInUse):
            JournalLock(str(tmp_path / "alias" / "j.db")).acquire()
    finally:
        first.release()


def test_a_holder_that_wrote_nothing_is_described_as_unknown() -> None:
    assert lock.describe({}) == "pid and host unknown"
    assert lock.describe({"pid": 7, "host": "m1"}) == "pid 7 on host m1"

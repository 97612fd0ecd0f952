"""The Python API in one import: ``taskfleet.connect()`` and what it hands back.

>>> import taskfleet
>>> with taskfleet.connect(profile="inventory/local/secrets/client.json") as client:
...     squares = list(client.map("squares", range(1000)))

``docs/api.md`` is the guide (every example there is run by the tests).
Standard library only, like the rest of the runtime.
"""

from __future__ import annotations

from taskfleet import authkey, defaults
from taskfleet import profile as profiles
from taskfleet.client import ChunkResult, Client, Job, Progress
from taskfleet.errors import (
    BadJobArguments,
    ItemError,
    JobCancelled,
    JobFailed,
    JobNotFound,
    MasterUnreachable,
    TaskfleetError,
    UnknownJob,
)


def connect(
    master: str | None = None,
    authkey_file: str | None = None,
    *,
    profile: str | None = None,
    connect_timeout: float = defaults.CONNECT_TIMEOUT,
    reconnect_for: float = defaults.RECONNECT_FOR,
    call_timeout: float = defaults.CLIENT_CALL_TIMEOUT,
) -> Client:
    """Connect to a master and return a :class:`Client` (a context manager).

    ``master`` is ``HOST:PORT``; ``authkey_file`` the cluster's key file;
    ``profile`` a connection profile (``inventory/<env>/secrets/client.json``).
    Missing settings come from ``TASKFLEET_MASTER`` / ``TASKFLEET_AUTHKEY_FILE``,
    then ``TASKFLEET_PROFILE`` — the same rule as the command line
    (:mod:`taskfleet.profile`). The master must answer within
    ``connect_timeout`` seconds; once connected, a restarting master is
    waited for up to ``reconnect_for`` seconds.

    Raises UsageError (nothing says where the master is), AuthkeyError,
    AuthkeyRejected, ProtocolMismatch, MasterUnreachable.
    """
    target = profiles.resolve(master, authkey_file, profile)
    client = Client(
        target.master,
        authkey.load(target.authkey_file),
        connect_timeout=connect_timeout,
        reconnect_for=reconnect_for,
        call_timeout=call_timeout,
    )
    try:
        client.ping()  # fail here, not at the first job
    except BaseException:
        client.close()
        raise
    return client


__all__ = [
    "BadJobArguments",
    "ChunkResult",
    "Client",
    "ItemError",
    "Job",
    "JobCancelled",
    "JobFailed",
    "JobNotFound",
    "MasterUnreachable",
    "Progress",
    "TaskfleetError",
    "UnknownJob",
    "connect",
]

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
    TLSError,
    TLSRefused,
    UnknownJob,
    UnsafeData,
)


def connect(
    master: str | None = None,
    authkey_file: str | None = None,
    *,
    profile: str | None = None,
    tls_ca: str | None = None,
    tls_cert: str | None = None,
    tls_key: str | None = None,
    connect_timeout: float = defaults.CONNECT_TIMEOUT,
    reconnect_for: float = defaults.RECONNECT_FOR,
    call_timeout: float = defaults.CLIENT_CALL_TIMEOUT,
) -> Client:
    """Connect to a master and return a :class:`Client` (a context manager).

    ``master`` is ``HOST:PORT``; ``authkey_file`` the cluster's key file;
    ``profile`` a connection profile (``inventory/<env>/secrets/client.json``);
    ``tls_ca``/``tls_cert``/``tls_key`` the cluster CA's certificate and this
    machine's certificate and key (all three, or none for a plaintext cluster;
    a deployed profile names them). Missing settings come from
    ``TASKFLEET_MASTER`` / ``TASKFLEET_AUTHKEY_FILE`` / ``TASKFLEET_TLS_*``, then
    ``TASKFLEET_PROFILE`` — the same rule as the command line
    (:mod:`taskfleet.profile`). The master must answer within
    ``connect_timeout`` seconds; once connected, a restarting master is
    waited for up to ``reconnect_for`` seconds.

    Raises UsageError (nothing says where the master is, some TLS files without
    the others), AuthkeyError, TLSError (a TLS file is missing, unreadable,
    expired or does not match), AuthkeyRejected, TLSRefused (the master's
    certificate is from another CA or does not name its address, or the master
    speaks plaintext), ProtocolMismatch, MasterUnreachable.
    """
    target = profiles.resolve(
        master, authkey_file, profile, tls_ca=tls_ca, tls_cert=tls_cert, tls_key=tls_key
    )
    key = authkey.load(target.authkey_file)
    if target.tls is not None:
        target.tls.check()  # a bad file is one clear error now, not a failed connection later
    client = Client(
        target.master,
        key,
        connect_timeout=connect_timeout,
        reconnect_for=reconnect_for,
        call_timeout=call_timeout,
        tls=target.tls,
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
    "TLSError",
    "TLSRefused",
    "TaskfleetError",
    "UnknownJob",
    "UnsafeData",
    "connect",
]

"""One error family for the whole runtime.

Every user-facing failure is a :class:`TaskfleetError` carrying *what* went
wrong and *what to do*; the CLI prints ``taskfleet: error: <what> — <fix>``
and exits with ``exit_code``. The errors pickle (they travel from the master
to clients as ``#ERROR`` replies), so ``__init__`` takes exactly ``args``.
"""

from __future__ import annotations

from dataclasses import dataclass


class TaskfleetError(Exception):
    """Base class: ``what`` happened; ``fix`` names the next step."""

    exit_code = 1

    def __init__(self, what: str, fix: str = "") -> None:
        super().__init__(what, fix)
        self.what = what
        self.fix = fix

    def __str__(self) -> str:
        return f"{self.what} — {self.fix}" if self.fix else self.what


class UsageError(TaskfleetError):
    """Bad command-line input (malformed address, bad number, missing option)."""

    exit_code = 2


class AuthkeyError(TaskfleetError):
    """The authkey file is missing, too short, unreadable or readable by others."""

    exit_code = 2


class AuthkeyRejected(TaskfleetError):
    """The master (or the peer) refused our authkey during the handshake."""


class MasterUnreachable(TaskfleetError):
    """No answer from the master within the allowed time."""


class BindError(TaskfleetError):
    """The master cannot listen on the requested address/port."""


class JournalError(TaskfleetError):
    """The journal file cannot be opened or written."""


class JournalInUse(JournalError):
    """Another master holds the journal (its lock file is locked)."""


class JournalDamaged(JournalError):
    """The journal file is corrupt, or is not a taskfleet journal at all."""


class UnknownJob(TaskfleetError):
    """A job name that is neither built in, ``module:function`` nor an entry point."""

    exit_code = 2


class BadJobArguments(TaskfleetError):
    """Items or options a job cannot take (refused at submit time)."""

    exit_code = 2


@dataclass(frozen=True)
class ItemError:
    """One item that failed: a record, not an exception.

    It stands in the failed item's place among a job's results (``on_error="skip"``,
    so results stay aligned with their items), is what ``Job.errors()`` lists,
    and is attached to :class:`JobFailed`. All fields are plain strings and
    numbers: the remote exception was formatted where it happened, so an
    exception that cannot be pickled still explains itself.
    """

    index: int  # position of the item in the job's items (0-based)
    item: str  # repr of the item, truncated
    kind: str  # exception | timeout | crash | unpicklable (taskfleet.protocol.FailureKind)
    type: str  # qualified exception type name ("" for crashes and timeouts)
    message: str
    traceback: str = ""  # formatted on the worker; "" when not kept
    worker: str = ""
    host: str = ""
    chunk: int = -1
    attempt: int = 0  # 1 for the chunk's first run; 0 when unknown
    final: bool = True  # False: the chunk was retried after this failure

    def __str__(self) -> str:
        what = f"{self.type}: {self.message}" if self.type else self.message
        where = f" on worker {self.worker} ({self.host})" if self.worker else ""
        return f"item {self.index} ({self.item}): {what}{where}"


class JobFailed(TaskfleetError):
    """A chunk of the job failed after its retries (on_error="fail"); the job is failed.

    ``error`` is the failure that decided it (with the remote traceback) when
    the client could read it.
    """

    def __init__(self, what: str, fix: str = "", error: ItemError | None = None) -> None:
        super().__init__(what, fix)
        self.error = error


class JobCancelled(TaskfleetError):
    """The job was cancelled; its remaining results will never arrive."""


class ItemsFailed(TaskfleetError):
    """The job finished, but some items failed (on_error="skip"): exit code 3."""

    exit_code = 3


class JobNotFound(TaskfleetError):
    """No job with this id on the master (never submitted, or pruned by retention)."""


class ProtocolMismatch(TaskfleetError):
    """The peer speaks another version of the wire protocol (taskfleet.protocol)."""

    exit_code = 2


class RemoteError(TaskfleetError):
    """An unexpected error inside the master while serving a call."""


class TLSError(TaskfleetError):
    """A local TLS file is missing, unreadable, malformed, expired or does not match."""

    exit_code = 2


class TLSRefused(TaskfleetError):
    """The TLS handshake with the peer failed for a reason retrying cannot fix
    (another CA, an address the certificate does not name, plaintext vs TLS)."""


class UnsafeData(TaskfleetError):
    """A peer sent a pickle that names a class or function outside the allowlist."""


class Stopping(Exception):
    """Raised inside retry loops when the process was asked to stop (not user-facing)."""

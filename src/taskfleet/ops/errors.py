"""The control-node tooling's errors, and the one way they reach the operator.

Every failure the tooling reports is an :class:`OpsError`, a
:class:`taskfleet.errors.TaskfleetError` like the runtime's: it carries *what*
went wrong and *what to do* (``fix``), and ``str()`` reads ``<what> — <fix>``.
Every ops entry point (``python -m taskfleet.ops.images``, ``python -m
taskfleet.ops.lab``, the Fabric tasks in ``deploy/fabfile.py``) runs its work
through :func:`run_cli`, which prints ``taskfleet: error: <what> — <fix>`` on
stderr and returns the error's ``exit_code``: one line, no traceback.

Exit codes are those each tool has always used: a Fabric task that is refused
(bad input, an unusable inventory, an unreachable master) exits 2, a host that
failed during an operation makes it exit 1 (its summary says which); the lab
and the image builds exit 1 on any failure; an interrupt exits 130.
"""

from __future__ import annotations

import sys
from collections.abc import Callable
from typing import TextIO

from taskfleet.errors import TaskfleetError

#: What every ops error line starts with (the runtime's CLI prints the same).
PREFIX = "taskfleet: error: "
#: Printed when the operator presses Ctrl-C; every ops command may simply be run again.
INTERRUPTED = "interrupted — run the command again to finish"
INTERRUPTED_EXIT = 130


class OpsError(TaskfleetError):
    """Base of every error the control-node tooling reports to the operator."""

    exit_code = 2


class InventoryError(OpsError):
    """The inventory cannot be used; ``problems`` lists every ``path: problem`` at once."""

    def __init__(self, source: str, problems: list[str]) -> None:
        lines = "\n".join(f"  {p}" for p in problems)
        super().__init__(f"inventory {source} is not usable", f"fix these:\n{lines}")
        # Pickle rebuilds an exception from its args: keep them this class's own.
        self.args = (source, problems)
        self.source = source
        self.problems = problems


class HostError(OpsError):
    """One host failed; the message names the host's problem and the fix."""


class LabError(OpsError):
    """The lab cannot be brought into the asked state."""

    exit_code = 1


class ImagesError(OpsError):
    """An image build step failed."""

    exit_code = 1


def print_error(error: TaskfleetError | str, stream: TextIO | None = None) -> None:
    """Write ``taskfleet: error: <error>`` as one line on ``stream`` (default stderr)."""
    sys.stdout.flush()  # what was printed before the error stays before it
    print(f"{PREFIX}{error}", file=stream or sys.stderr, flush=True)


def run_cli(action: Callable[[], int | None]) -> int:
    """Run an entry point's work; turn its errors into one line and an exit code.

    Returns ``action()``'s own exit code (None counts as 0), an
    :class:`OpsError`'s ``exit_code`` after printing it, or 130 on Ctrl-C.
    Anything else is a bug and keeps its traceback.
    """
    try:
        return action() or 0
    except TaskfleetError as exc:
        print_error(exc)
        return exc.exit_code
    except KeyboardInterrupt:
        print_error(INTERRUPTED)
        return INTERRUPTED_EXIT

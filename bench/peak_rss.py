"""Run a command and write its own peak RSS: ``python bench/peak_rss.py OUT -- CMD...``.

Why a launcher: Linux records the peak RSS of the address space a process had
before ``exec`` in the rusage it reports, and a child of a large process (a
pytest session, the benchmark) starts from a fork of that process. So
``wait4``'s ``ru_maxrss`` of a command started directly is at least its
parent's peak — a 30 MB client measured as 200 MB under pytest. This launcher
is a small fresh process: the command it starts inherits at most this
launcher's few MB, so ``ru_maxrss`` is the command's own peak.

The command's stdin, stdout and stderr are this process's; OUT receives the
peak in KiB (one integer); the exit status is the command's (128 + N when a
signal N ended it).
"""

from __future__ import annotations

import os
import subprocess
import sys


def main(argv: list[str]) -> int:
    if len(argv) < 3 or argv[1] != "--":
        print("usage: peak_rss.py OUT -- CMD [ARG...]", file=sys.stderr)
        return 2
    out, command = argv[0], argv[2:]
    child = subprocess.Popen(command)
    _, status, usage = os.wait4(child.pid, 0)
    with open(out, "w") as fh:
        fh.write(f"{usage.ru_maxrss}\n")
    code = os.waitstatus_to_exitcode(status)
    return 128 - code if code < 0 else code


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))

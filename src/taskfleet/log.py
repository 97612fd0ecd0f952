"""One-line, timestamped log records on stderr."""

from __future__ import annotations

import logging
import sys

_FORMAT = "%(asctime)s.%(msecs)03d %(name)s %(levelname)s %(message)s"


def setup(level: int = logging.INFO) -> None:
    """Send ``taskfleet.*`` records to stderr, one line each, with a timestamp."""
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(logging.Formatter(_FORMAT, datefmt="%Y-%m-%dT%H:%M:%S"))
    root = logging.getLogger("taskfleet")
    root.handlers[:] = [handler]
    root.setLevel(level)
    root.propagate = False


def get(name: str) -> logging.Logger:
    return logging.getLogger(f"taskfleet.{name}")

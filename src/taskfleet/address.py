"""HOST:PORT parsing shared by every command."""

from __future__ import annotations

import re

from taskfleet.errors import UsageError

_HOSTPORT = re.compile(
    r"^(?:\[(?P<v6>[0-9A-Fa-f:.]+)\]|(?P<host>[A-Za-z0-9._-]+)):(?P<port>[0-9]{1,5})$"
)


def parse_hostport(
    text: str, option: str = "--master", example: str = "10.0.0.1:7451"
) -> tuple[str, int]:
    """Parse ``HOST:PORT`` or ``[IPv6]:PORT``; raise UsageError naming the fix."""
    match = _HOSTPORT.match(text.strip())
    fix = f"use HOST:PORT, e.g. {option} {example}"
    if match is None:
        raise UsageError(f"malformed {option} {text!r}", fix)
    port = int(match["port"])
    if not 1 <= port <= 65535:
        raise UsageError(f"malformed {option} {text!r}: port {port} is not in 1-65535", fix)
    host = match["v6"] or match["host"]
    return host, port


def parse_port(text: str) -> int:
    if not text.isdigit() or not 1 <= int(text) <= 65535:
        raise UsageError(f"bad --port {text!r}", "use a number in 1-65535 (default 7451)")
    return int(text)


def format_hostport(host: str, port: int) -> str:
    return f"[{host}]:{port}" if ":" in host else f"{host}:{port}"

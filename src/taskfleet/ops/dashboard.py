"""``make dashboard``: the URL of the master's dashboard, or an SSH tunnel to it.

The dashboard is served by the master on ``taskfleet_bind_ip:taskfleet_http_port``
(docs/metrics.md), open to the admin and monitoring sources. When this control
node can reach it, the URL is printed and that is all. When it cannot (the
firewall does not admit this machine, or another network is in between) — or
with ``tunnel=True`` — an SSH tunnel goes through the master host (the same
verified connection as every operation): ``http://127.0.0.1:<free port>/``
stays open in the foreground until Ctrl-C, which closes it.
"""

from __future__ import annotations

import http.client
import socket
import threading
import time
from collections.abc import Callable

from taskfleet import defaults
from taskfleet.address import format_hostport
from taskfleet.ops.errors import OpsError
from taskfleet.ops.inventory import Inventory
from taskfleet.ops.ssh import connect, explain

PROBE_TIMEOUT = 3.0
TUNNEL_READY_TIMEOUT = 10.0
"""Seconds the tunnel gets to answer: Fabric's forwarder binds its local port in a
thread of its own, so the first probes may find nothing listening yet."""


def http_port(inv: Inventory) -> int:
    return int(inv.master.vars.get("taskfleet_http_port", defaults.HTTP_PORT))


def answers(host: str, port: int, timeout: float = PROBE_TIMEOUT) -> bool:
    """Whether the master's HTTP server answers ``/healthz`` there (200 or 503 both count)."""
    conn = http.client.HTTPConnection(host, port, timeout=timeout)
    try:
        conn.request("GET", "/healthz")
        return conn.getresponse().status in (200, 503)
    except (OSError, http.client.HTTPException):
        return False
    finally:
        conn.close()


def answers_within(host: str, port: int, seconds: float) -> bool:
    """Whether ``/healthz`` answers there before ``seconds`` pass, probing again while
    the port refuses (a listener that is still starting)."""
    deadline = time.monotonic() + seconds
    while True:
        left = deadline - time.monotonic()
        if left <= 0:
            return False
        if answers(host, port, timeout=left):  # a refusal returns at once
            return True
        time.sleep(min(0.1, max(0.0, deadline - time.monotonic())))


def free_local_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _say(text: str) -> None:
    print(text, flush=True)  # a pipe (a test, `| head -1`) sees the URL at once


def dashboard(
    inv: Inventory,
    tunnel: bool = False,
    say: Callable[[str], None] = _say,
    until: threading.Event | None = None,
) -> int:
    """Print the dashboard's URL; tunnel when needed (or asked) and hold it until Ctrl-C
    (or ``until`` is set). Raises OpsError when neither way reaches the dashboard."""
    host, port = inv.master_bind, http_port(inv)
    url = f"http://{format_hostport(host, port)}/"
    if not tunnel and answers(host, port):
        say(f"dashboard: {url}")
        return 0
    conn = connect(inv.master)
    local = free_local_port()
    try:
        with conn.forward_local(local, remote_port=port, remote_host=host, local_host="127.0.0.1"):
            if not answers_within("127.0.0.1", local, TUNNEL_READY_TIMEOUT):
                raise OpsError(
                    f"the master's HTTP server does not answer at {url}, not even through SSH"
                    f" to {inv.master.name}",
                    "check that the master runs (make status) and was deployed with"
                    " taskfleet_http_port",
                )
            why = "as asked" if tunnel else f"{url} is not reachable from here"
            say(
                f"dashboard: http://127.0.0.1:{local}/ (SSH tunnel through {inv.master.name}"
                f" to {url}, {why}; Ctrl-C closes it)"
            )
            stop = until or threading.Event()
            try:
                while not stop.wait(0.5):
                    pass
            except KeyboardInterrupt:
                say("dashboard: tunnel closed")
    except OpsError:
        raise
    except Exception as exc:  # SSH refused, host key unknown, …: one line
        raise OpsError(
            f"cannot open an SSH tunnel to {inv.master.name}: {explain(inv.master, exc)}"
        ) from None
    finally:
        conn.close()
    return 0

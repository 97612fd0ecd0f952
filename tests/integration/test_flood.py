"""A handshake nobody can starve: one source flooding the master with idle and
trickling connections keeps nobody else out, and its refusals cost a few log
lines, not a log flood."""

from __future__ import annotations

import json
import re
import select
import socket
import threading
import time

from taskfleet import defaults
from tests.integration.conftest import Cluster

ATTACKER = "127.0.0.2"  # a second loopback address: the flood's source


class Flood:
    """``idle`` silent sockets and ``trickle`` sockets sending one byte a second, from
    ATTACKER, each reopened as soon as the master drops it, for ``seconds``."""

    def __init__(self, port: int, idle: int, trickle: int, seconds: float) -> None:
        self.port = port
        self.kinds = ["idle"] * idle + ["trickle"] * trickle
        self.seconds = seconds
        self.opened = 0
        self.longest = {"idle": 0.0, "trickle": 0.0}  # longest a connection was kept
        self.thread = threading.Thread(target=self._run, daemon=True)

    def _open(self) -> socket.socket | None:
        try:
            s = socket.create_connection(
                ("127.0.0.1", self.port), timeout=2, source_address=(ATTACKER, 0)
            )
        except OSError:
            return None
        s.setblocking(False)
        self.opened += 1
        return s

    def _run(self) -> None:
        end = time.monotonic() + self.seconds
        socks: dict[socket.socket, tuple[str, float, float]] = {}
        pending = list(self.kinds)
        while time.monotonic() < end:
            while pending:
                kind = pending.pop()
                s = self._open()
                if s is None:
                    pending.append(kind)
                    break
                now = time.monotonic()
                socks[s] = (kind, now, now)
            readable, _, _ = select.select(list(socks), [], [], 0.2)
            now = time.monotonic()
            for s in readable:
                try:
                    data = s.recv(4096)
                except OSError:
                    data = b""
                if not data:  # dropped by the master
                    kind, opened, _ = socks.pop(s)
                    self.longest[kind] = max(self.longest[kind], now - opened)
                    s.close()
                    pending.append(kind)
            for s, (kind, opened, last) in list(socks.items()):
                if kind == "trickle" and now - last >= 1.0:
                    try:
                        # A TLS record header first, then junk: never a whole hello.
                        s.send(b"\x16" if last == opened else b"\x03")
                    except OSError:
                        continue
                    socks[s] = (kind, opened, now)
            time.sleep(0.05)
        for s in socks:
            s.close()


def test_a_flood_from_one_source_keeps_no_worker_or_client_from_another_out(
    tls_cluster: Cluster,
) -> None:
    master = tls_cluster.master()
    flood = Flood(tls_cluster.port, idle=64, trickle=64, seconds=25)
    flood.thread.start()
    try:
        time.sleep(3)  # the flood holds every slot it can get
        t0 = time.monotonic()
        tls_cluster.worker("w1", "--host-label", "hostA")  # from 127.0.0.1
        joined = time.monotonic() - t0
        r = tls_cluster.client("status", "--json", "--connect-timeout", "5")
        assert r.returncode == 0, r.stderr
        r = tls_cluster.client("smoke", "--count", "20000", "--expect-workers", "1", "--json")
        assert r.returncode == 0, r.stderr
        assert json.loads(r.stdout.splitlines()[-1])["verified"] == 20000
        assert flood.thread.is_alive(), "the flood was still on"
    finally:
        flood.thread.join(timeout=60)
    assert joined < 10, f"the worker took {joined:.1f}s to join"
    # The deadline is for the whole handshake: a byte a second does not extend it.
    assert flood.longest["trickle"] < defaults.HANDSHAKE_TIMEOUT + 1.5, flood.longest
    assert flood.longest["idle"] < defaults.TLS_SNIFF_TIMEOUT + 1.5, flood.longest
    # Refusals of the flooding source: one line at once, then one per interval, with counts.
    time.sleep(defaults.REFUSAL_LOG_INTERVAL + 1.5)  # the last interval is summed up
    lines = [line for line in master.text().splitlines() if f"refused {ATTACKER}" in line]
    assert flood.opened > 300
    assert 2 <= len(lines) <= 25 / defaults.REFUSAL_LOG_INTERVAL + 3, lines
    summaries = [re.search(rf"refused {ATTACKER}: (\d+) more in the last", line) for line in lines]
    counted = sum(int(m[1]) for m in summaries if m)
    assert counted + 1 >= flood.opened - 128, (counted, flood.opened)
    assert any("too many unauthenticated connections from this address" in x for x in lines)

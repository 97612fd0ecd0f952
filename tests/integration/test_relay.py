"""The relay attack: an on-path attacker *without the key* between the peers.

It lets the authkey handshake through and rewrites what follows
(tests/integration/relay.py). On plaintext it still makes wrong results (no
integrity), and every frame it forges is a real code-execution payload — the
stock unpickler runs it — yet no taskfleet process runs it: each decodes with
the restricted unpickler and says so. With TLS it can only break connections:
they drop, peers reconnect, and the job completes exactly once, all right.
"""

from __future__ import annotations

import json
import pickle
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from taskfleet import authkey
from taskfleet.manager import BoardManager
from tests.integration.conftest import Cluster, tls_args
from tests.integration.relay import Relay


@pytest.fixture
def relays() -> Iterator[list[Relay]]:
    made: list[Relay] = []
    yield made
    for relay in made:
        relay.close()


def _relay(relays: list[Relay], cluster: Cluster, mode: str, **kw: object) -> Relay:
    relay = Relay(("127.0.0.1", cluster.port), mode, **kw)  # type: ignore[arg-type]
    relays.append(relay)
    return relay


def _smoke_via(cluster: Cluster, relay: Relay, count: int, workers: int) -> dict[str, object]:
    r = cluster.run(
        "smoke",
        "--count",
        str(count),
        "--expect-workers",
        str(workers),
        "--timeout",
        "120",
        "--json",
        "--master",
        relay.address,
        "--authkey-file",
        str(cluster.key),
        *tls_args(cluster.client_tls),
        timeout=180,
    )
    report: dict[str, object] = json.loads(r.stdout.splitlines()[-1])
    report["_rc"], report["_stderr"] = r.returncode, r.stderr
    return report


def _worker_via(cluster: Cluster, relay: Relay, name: str, wait: bool = True) -> object:
    return cluster.spawn(
        name,
        "worker",
        "--master",
        relay.address,
        "--authkey-file",
        str(cluster.key),
        "--name",
        name,
        "--processes",
        "1",
        *tls_args(cluster.client_tls),
    )


def test_on_plaintext_the_relay_makes_the_client_accept_wrong_results(
    cluster: Cluster, relays: list[Relay]
) -> None:
    """The attack works: without TLS nothing protects the results' integrity."""
    cluster.master()
    cluster.worker("w1")
    relay = _relay(relays, cluster, "wrong")
    report = _smoke_via(cluster, relay, 20000, 1)
    assert relay.rewritten > 0
    assert report["wrong"] == 20000 and report["verified"] == 0 and report["ok"] is False


def test_on_plaintext_forged_code_is_refused_by_master_worker_and_client(
    cluster: Cluster, relays: list[Relay], tmp_path: Path
) -> None:
    markers = tmp_path / "markers"
    markers.mkdir()
    master = cluster.master()
    # A request to the master: it drops the connection and logs what it refused.
    to_master = _relay(relays, cluster, "exec", name="m", markers=markers, kinds=("request",))
    r = cluster.run(
        "status",
        "--master",
        to_master.address,
        "--authkey-file",
        str(cluster.key),
        "--connect-timeout",
        "3",
    )
    assert r.returncode == 2 and "cannot reach the master" in r.stderr, r.stderr
    master.wait_for(
        r"refused 127\.0\.0\.1:\d+: its request names builtins:exec, which is not plain data"
    )
    # A reply to a worker: it refuses it and reconnects (a tampered connection).
    to_worker = _relay(relays, cluster, "exec", name="w", markers=markers, kinds=("reply",))
    worker = _worker_via(cluster, to_worker, "victim")
    worker.wait_for(  # type: ignore[attr-defined]
        r"refused a reply naming builtins:exec: tampering on the path\?"
    )
    # A result blob to a client: one line naming the worker, the job stays readable elsewhere.
    cluster.worker("w1")
    to_client = _relay(relays, cluster, "exec", name="c", markers=markers, kinds=("result",))
    r = cluster.run(
        "submit",
        "squares",
        "--range",
        "3000",
        "--master",
        to_client.address,
        "--authkey-file",
        str(cluster.key),
    )
    assert r.returncode == 1
    lines = r.stderr.strip().splitlines()
    assert lines[-1].startswith("taskfleet: error: refused the results of chunk ")
    assert "from worker w1 on " in lines[-1]
    assert (
        "they name builtins:exec, which is neither plain data nor a type job 'squares'"
        in (lines[-1])
    )
    assert sorted(markers.iterdir()) == [], "no taskfleet process ran the forged code"

    # Each forged frame is a real exploit: the stock unpickler runs it.
    kinds = set()
    for relay in (to_master, to_worker, to_client):
        for kind, frame in relay.forged:
            kinds.add(kind)
            pickle.loads(frame)
    assert kinds == {"request", "reply", "result"}
    assert sorted(p.name for p in markers.iterdir()) == ["c-result", "m-request", "w-reply"]
    # And a stock multiprocessing client on the same path runs it on the spot.
    stock = _relay(relays, cluster, "exec", name="stock", markers=markers, kinds=("reply",))
    manager = BoardManager(
        address=("127.0.0.1", stock.port), authkey=authkey.load(str(cluster.key))
    )
    manager.connect()  # its first reply carries the payload: it has run by now
    assert (markers / "stock-reply").exists()


def test_with_tls_the_relay_only_breaks_connections_and_the_job_completes_exactly_once(
    tls_cluster: Cluster, relays: list[Relay]
) -> None:
    master = tls_cluster.master("--lease-timeout", "3")
    to_workers = _relay(relays, tls_cluster, "flip", name="w", tamper_conns=6)
    to_client = _relay(relays, tls_cluster, "flip", name="c", tamper_conns=3)
    for name in ("w1", "w2"):
        proc = _worker_via(tls_cluster, to_workers, name)
        proc.wait_for(f"worker {name} connected")  # type: ignore[attr-defined]
    report = _smoke_via(tls_cluster, to_client, 100_000, 2)
    assert report["_rc"] == 0, report
    assert (report["ok"], report["verified"], report["wrong"], report["missing"]) == (
        True,
        100_000,
        0,
        0,
    )
    assert report["duplicates"] == 0  # every chunk reached the client exactly once
    assert to_client.rewritten >= 1 and to_workers.rewritten >= 1, "the relay did tamper"
    deadline = time.monotonic() + 10
    while "TLS failed" not in master.text() and time.monotonic() < deadline:
        time.sleep(0.1)
    assert "connection dropped: TLS failed" in master.text()

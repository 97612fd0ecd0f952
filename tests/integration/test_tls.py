"""Mutual TLS between real processes on loopback: certificates made by a test CA.

Every refusal is checked on both sides: the peer's one line on stderr, and the
master's log line (the master keeps serving afterwards).
"""

from __future__ import annotations

import datetime as dt
import json
import re
import shutil
import socket
import ssl
import struct
import subprocess
from decimal import Decimal
from pathlib import Path

import pytest

import taskfleet
from taskfleet.errors import TLSRefused
from taskfleet.tls import TLSConfig, client_failure
from tests.integration.conftest import Cluster, free_port, tls_args
from tests.tlscerts import CA

NOW = dt.datetime.now(dt.UTC)


def status_as(
    cluster: Cluster, tls: TLSConfig | None, master: str | None = None
) -> subprocess.CompletedProcess[str]:
    """``taskfleet status`` with the cluster's key and the given TLS files (None: plaintext)."""
    return cluster.run(
        "status",
        "--master",
        master or cluster.address,
        "--authkey-file",
        str(cluster.key),
        *tls_args(tls),
    )


def one_line(r: object) -> str:
    err: str = r.stderr  # type: ignore[attr-defined]
    assert err.count("\n") == 1 and "Traceback" not in err, err
    return err.rstrip("\n")


def test_smoke_over_mutual_tls_and_status_shows_the_certificate_expiry(
    tls_cluster: Cluster,
) -> None:
    master = tls_cluster.master()
    assert "(mutual TLS, journal" in master.text()
    tls_cluster.worker("w1", "--host-label", "hostA")
    tls_cluster.worker("w2", "--host-label", "hostB")
    r = tls_cluster.client("smoke", "--count", "50000", "--expect-workers", "2", "--json")
    assert r.returncode == 0, r.stderr
    report = json.loads(r.stdout.splitlines()[-1])
    assert (report["ok"], report["verified"], report["wrong"]) == (True, 50000, 0)
    assert set(report["workers"]) == {"w1", "w2"}
    tls = tls_cluster.status()["master"]["tls"]
    assert tls["enabled"] is True
    assert 364 < tls["cert_days_left"] <= 365 and 3649 < tls["ca_days_left"] <= 3650
    assert tls["cert_names"] == ["127.0.0.1", "master"]
    assert re.fullmatch(r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\dZ", tls["cert_not_after"])


def test_a_plaintext_peer_is_told_the_master_requires_tls_and_the_master_logs_it(
    tls_cluster: Cluster,
) -> None:
    master = tls_cluster.master()
    r = status_as(tls_cluster, None)
    assert r.returncode == 2  # status: the master cannot be reached
    assert one_line(r) == (
        f"taskfleet: error: the master at {tls_cluster.address} requires TLS — pass --tls-ca,"
        ' --tls-cert and --tls-key (or a --profile with a "tls" section; make deploy writes'
        " them to inventory/<env>/secrets/)"
    )
    master.wait_for(
        r"refused 127\.0\.0\.1:\d+: plaintext peer \(it sent no TLS hello; this master requires"
        r" TLS\)"
    )
    # A plaintext worker gives up at once with the same line (nothing to retry).
    worker = tls_cluster.spawn(
        "plainworker",
        "worker",
        "--master",
        tls_cluster.address,
        "--authkey-file",
        str(tls_cluster.key),
    )
    assert worker.popen.wait(timeout=30) == 1
    assert "requires TLS" in worker.text()
    tls_cluster.worker("w1")  # the master still serves certified peers
    assert [w["name"] for w in tls_cluster.status()["workers"]] == ["w1"]


def test_a_tls_client_of_a_plaintext_master_is_told_and_the_master_logs_it(
    cluster: Cluster, tmp_path: Path
) -> None:
    master = cluster.master()
    client = CA(tmp_path / "pki").config("client")
    r = status_as(cluster, client)
    assert r.returncode == 2  # status: the master cannot be reached
    assert one_line(r) == (
        f"taskfleet: error: the master at {cluster.address} does not speak TLS (it runs"
        " without --tls-*) — deploy the master with TLS (taskfleet_tls: true), or connect"
        " without the --tls-* options to a plaintext cluster"
    )
    master.wait_for(
        r"refused 127\.0\.0\.1:\d+: it speaks TLS, this master runs without it \(start it with"
        r" --tls-ca/--tls-cert/--tls-key\)"
    )


def test_a_worker_with_a_certificate_from_another_ca_is_refused_and_both_sides_say_it(
    tls_cluster: Cluster, tmp_path: Path
) -> None:
    assert tls_cluster.ca is not None
    master = tls_cluster.master()
    other = CA(tmp_path / "other", "other")
    forged = other.issue("intruder")
    # It trusts the cluster's CA (public) but its own certificate is another CA's.
    intruder = TLSConfig(str(tls_cluster.ca.path), str(forged.cert), str(forged.key))
    worker = tls_cluster.worker("intruder", wait=False, tls=intruder)
    assert worker.popen.wait(timeout=30) == 1
    line = next(ln for ln in worker.text().splitlines() if ln.startswith("taskfleet: error:"))
    # A long path may be cut in the middle (error lines are bounded): both ends stay.
    assert line.startswith(
        f"taskfleet: error: the master at {tls_cluster.address} refused our TLS certificate /"
    )
    assert line.endswith(
        f"{Path(forged.cert).name}: it is not issued by the master's CA — use a certificate"
        " issued by the cluster's CA (make deploy writes one to inventory/<env>/secrets/tls/)"
    )
    master.wait_for(
        r"refused 127\.0\.0\.1:\d+: its TLS certificate is not issued by the cluster's CA"
    )
    # A client that trusts only the other CA does not trust the master either.
    r = status_as(tls_cluster, TLSConfig(str(other.path), str(forged.cert), str(forged.key)))
    assert r.returncode == 2  # status: the master cannot be reached
    assert one_line(r) == (
        f"taskfleet: error: the master at {tls_cluster.address} presented a TLS certificate not"
        f" issued by the CA in {other.path} — use the CA of the master's cluster (--tls-ca), or"
        f" check that {tls_cluster.address} is the right master"
    )
    tls_cluster.worker("w1")
    assert [w["name"] for w in tls_cluster.status()["workers"]] == ["w1"]


def _raw_tls_peer(address: tuple[str, int], ctx: ssl.SSLContext) -> BaseException:
    """Connect with an SSL context taskfleet would not build; return how it failed."""
    sock = socket.create_connection(address, timeout=10)
    try:
        tls = ctx.wrap_socket(sock, server_hostname=address[0])
        tls.recv(64)  # TLS 1.3: the master's verdict on our certificate arrives here
    except (ssl.SSLError, OSError) as exc:
        return exc
    finally:
        sock.close()
    raise AssertionError("the master accepted the peer")


def test_an_expired_certificate_is_refused_with_its_line_on_both_sides(
    tls_cluster: Cluster,
) -> None:
    assert tls_cluster.ca is not None
    master = tls_cluster.master()
    old = tls_cluster.ca.issue(
        "old", not_before=NOW - dt.timedelta(days=30), not_after=NOW - dt.timedelta(days=1)
    )
    expired = TLSConfig(str(tls_cluster.ca.path), str(old.cert), str(old.key))
    r = status_as(tls_cluster, expired)
    assert r.returncode == 2
    day = (NOW - dt.timedelta(days=1)).strftime("%Y-%m-%d")
    assert re.fullmatch(
        rf"taskfleet: error: TLS certificate {re.escape(str(old.cert))} expired on {day}"
        r" \d\d:\d\d UTC — issue a new certificate: make rotate-tls INVENTORY=<env>",
        one_line(r),
    )
    # A peer that presents it anyway (no local check) is refused by the master.
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    ctx.load_verify_locations(tls_cluster.ca.path)
    ctx.load_cert_chain(old.cert, old.key)
    exc = _raw_tls_peer(("127.0.0.1", tls_cluster.port), ctx)
    failure = client_failure(exc, tls_cluster.address, "127.0.0.1", expired)
    assert failure is not None and "refused our TLS certificate" in str(failure)
    assert "the master says it has expired" in str(failure)
    master.wait_for(r"refused 127\.0\.0\.1:\d+: its TLS certificate has expired")


def test_a_peer_without_a_certificate_is_refused(tls_cluster: Cluster) -> None:
    assert tls_cluster.ca is not None and tls_cluster.client_tls is not None
    master = tls_cluster.master()
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    ctx.load_verify_locations(tls_cluster.ca.path)
    exc = _raw_tls_peer(("127.0.0.1", tls_cluster.port), ctx)
    failure = client_failure(exc, tls_cluster.address, "127.0.0.1", tls_cluster.client_tls)
    assert failure is not None and "the master requires one" in str(failure)
    master.wait_for(r"refused 127\.0\.0\.1:\d+: it sent no TLS client certificate")


def test_an_address_the_masters_certificate_does_not_name_is_refused(
    tls_cluster: Cluster,
) -> None:
    port = free_port()
    master = tls_cluster.spawn(
        "master2",
        "master",
        "--bind",
        "127.0.0.2",
        "--port",
        str(port),
        "--authkey-file",
        str(tls_cluster.key),
        *tls_args(tls_cluster.master_tls),  # a certificate for 127.0.0.1 only
    )
    master.wait_for("listening on")
    master.wait_for(
        "the TLS certificate names 127.0.0.1, master, not the bind address 127.0.0.2: clients"
        " that dial 127.0.0.2 will refuse it"
    )
    r = status_as(tls_cluster, tls_cluster.client_tls, f"127.0.0.2:{port}")
    assert r.returncode == 2  # status: the master cannot be reached
    assert one_line(r) == (
        f"taskfleet: error: the master's TLS certificate at 127.0.0.2:{port} is not valid for"
        " 127.0.0.2 (IP address mismatch, certificate is not valid for '127.0.0.2'.) — connect"
        " to an address the certificate names (the master's bind address), or reissue it for"
        " this address: make rotate-tls INVENTORY=<env>"
    )
    master.wait_for(r"refused 127\.0\.0\.1:\d+: TLS handshake failed \(.*bad certificate\)")


def test_a_master_with_a_bad_certificate_stops_before_binding(
    tls_cluster: Cluster, tmp_path: Path
) -> None:
    assert tls_cluster.ca is not None and tls_cluster.master_tls is not None
    other = tls_cluster.ca.issue("other")
    r = tls_cluster.run(
        "master",
        "--port",
        str(tls_cluster.port),
        "--authkey-file",
        str(tls_cluster.key),
        "--tls-ca",
        str(tls_cluster.ca.path),
        "--tls-cert",
        tls_cluster.master_tls.cert,
        "--tls-key",
        str(other.key),
    )
    assert r.returncode == 2
    assert one_line(r) == (
        f"taskfleet: error: TLS key {other.key} does not belong to certificate"
        f" {tls_cluster.master_tls.cert} — pass the key that was issued with the certificate"
    )
    with socket.socket() as s:
        s.bind(("127.0.0.1", tls_cluster.port))  # nothing was bound


def test_a_profile_carries_the_tls_files_relative_to_itself(tls_cluster: Cluster) -> None:
    assert tls_cluster.ca is not None and tls_cluster.client_tls is not None
    tls_cluster.master()
    folder = tls_cluster.tmp / "secrets"
    (folder / "tls").mkdir(parents=True)
    shutil.copy(tls_cluster.key, folder / "authkey")
    shutil.copy(tls_cluster.ca.path, folder / "tls/ca.crt")
    shutil.copy(tls_cluster.client_tls.cert, folder / "tls/client.crt")
    shutil.copy(tls_cluster.client_tls.key, folder / "tls/client.key")
    profile = folder / "client.json"
    profile.write_text(
        json.dumps(
            {
                "master": tls_cluster.address,
                "authkey_file": "authkey",
                "tls": {"ca": "tls/ca.crt", "cert": "tls/client.crt", "key": "tls/client.key"},
            }
        )
    )
    r = tls_cluster.run("status", "--json", "--profile", str(profile))
    assert r.returncode == 0, r.stderr
    assert json.loads(r.stdout)["master"]["tls"]["enabled"] is True


def test_the_tls_required_frame_is_a_valid_plaintext_frame() -> None:
    """What a plaintext taskfleet peer reads in place of the challenge: one length-prefixed
    frame, never mistaken for a TLS record (first byte 0x16) or a challenge."""
    from taskfleet.tls import TLS_REQUIRED

    frame = struct.pack("!i", len(TLS_REQUIRED)) + TLS_REQUIRED
    assert frame[0] != 0x16 and not TLS_REQUIRED.startswith(b"#CHALLENGE#")


def test_the_python_api_connects_over_mutual_tls_by_arguments_and_by_profile(
    tls_cluster: Cluster,
) -> None:
    cfg = tls_cluster.client_tls
    assert cfg is not None and tls_cluster.ca is not None
    tls_cluster.master()
    tls_cluster.worker("w1")
    key = str(tls_cluster.key)
    with taskfleet.connect(
        tls_cluster.address, key, tls_ca=cfg.ca, tls_cert=cfg.cert, tls_key=cfg.key
    ) as client:
        assert list(client.map("squares", range(3000), chunk_size=400)) == [
            n * n for n in range(3000)
        ]
        job = client.submit("tests.integration.testjobs:decimal_half", range(5))
        assert job.result(timeout=60) == [Decimal(n) / 2 for n in range(5)]
        assert client.status()["master"]["tls"]["enabled"] is True
    profile = tls_cluster.tmp / "api-profile.json"
    tls_files = {"ca": cfg.ca, "cert": cfg.cert, "key": cfg.key}
    profile.write_text(
        json.dumps({"master": tls_cluster.address, "authkey_file": key, "tls": tls_files})
    )
    with taskfleet.connect(profile=str(profile)) as client:
        assert client.job(job.id).result(timeout=60) == [Decimal(n) / 2 for n in range(5)]
    # Without the TLS files: refused at once, with what to pass.
    with pytest.raises(TLSRefused, match="requires TLS"):
        taskfleet.connect(tls_cluster.address, key, connect_timeout=10)

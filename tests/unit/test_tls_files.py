"""TLS files: the certificate reader, and one line for every way the files can be wrong."""

from __future__ import annotations

import datetime as dt
import threading
import time
from pathlib import Path

import pytest
from cryptography import x509

from taskfleet import defaults
from taskfleet.errors import TLSError
from taskfleet.tls import TLSConfig, cert_info, pem_certificates
from tests.tlscerts import CA

UTC = dt.UTC
NOW = dt.datetime.now(UTC)


@pytest.fixture
def ca(tmp_path: Path) -> CA:
    return CA(tmp_path)


def test_the_der_reader_agrees_with_cryptography(ca: CA) -> None:
    issued = ca.issue("worker1", ("10.1.2.3", "::1"))
    pem = issued.cert.read_bytes()
    (der,) = pem_certificates(pem)
    info = cert_info(der)
    ref = x509.load_pem_x509_certificate(pem)
    assert info.not_before == ref.not_valid_before_utc.replace(microsecond=0)
    assert info.not_after == ref.not_valid_after_utc.replace(microsecond=0)
    assert info.ips == ("10.1.2.3", "::1") and info.dns == ("worker1",)
    assert 364 < info.days_left() <= 365
    ca_info = cert_info(pem_certificates(ca.path.read_bytes())[0])
    assert ca_info.names() == [] and ca_info.days_left() > 3600


def test_a_good_configuration_checks_and_builds_both_contexts(ca: CA) -> None:
    cfg = ca.config("m")
    own, authority = cfg.check()
    assert own.ips == ("127.0.0.1",) and authority.not_after > own.not_after
    assert cfg.context(server_side=True) is cfg.context(server_side=True)
    assert cfg.context(server_side=False).check_hostname


def _err(cfg: TLSConfig) -> str:
    with pytest.raises(TLSError) as err:
        cfg.context(server_side=False)
    text = str(err.value)
    assert "\n" not in text and " — " in text
    return text


def test_missing_files_name_the_file_and_where_the_deploy_puts_them(ca: CA, tmp_path: Path) -> None:
    good = ca.issue("c")
    missing = tmp_path / "nope.crt"
    assert _err(TLSConfig(str(ca.path), str(missing), str(good.key))) == (
        f"TLS certificate {missing} does not exist — pass the cluster's files: --tls-ca,"
        " --tls-cert, --tls-key (make deploy writes them to inventory/<env>/secrets/tls/)"
    )
    assert _err(TLSConfig(str(missing), str(good.cert), str(good.key))).startswith(
        f"TLS CA certificate {missing} does not exist — "
    )
    assert _err(TLSConfig(str(ca.path), str(good.cert), str(missing))).startswith(
        f"TLS key {missing} does not exist — "
    )
    assert _err(TLSConfig(str(ca.path), str(tmp_path), str(good.key))).startswith(
        f"TLS certificate {tmp_path} is not a regular file — "
    )


def test_a_key_readable_by_everyone_is_refused(ca: CA) -> None:
    good = ca.issue("c")
    good.key.chmod(0o644)
    assert _err(TLSConfig(str(ca.path), str(good.cert), str(good.key))) == (
        f"TLS key {good.key} is accessible by every user (mode 0644) — chmod 600 {good.key}"
    )


def test_a_key_that_belongs_to_another_certificate_is_refused(ca: CA) -> None:
    one, two = ca.issue("one"), ca.issue("two")
    assert _err(TLSConfig(str(ca.path), str(one.cert), str(two.key))) == (
        f"TLS key {two.key} does not belong to certificate {one.cert}"
        " — pass the key that was issued with the certificate"
    )


def test_a_key_replaced_moments_after_its_certificate_is_read_again_not_refused(
    ca: CA, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A rotation writes the certificate, then the key: a process starting in between
    waits for the pair (up to TLS_FILES_SETTLE) instead of failing."""
    old, new = ca.issue("old"), ca.issue("new")
    monkeypatch.setattr(defaults, "TLS_FILES_SETTLE", 5.0)
    cert, key = new.cert, old.key  # the certificate is new, the key not yet
    swap = threading.Timer(0.6, lambda: key.write_bytes(new.key.read_bytes()))
    swap.start()
    t0 = time.monotonic()
    try:
        TLSConfig(str(ca.path), str(cert), str(key)).context(server_side=False)
    finally:
        swap.join()
    assert 0.5 <= time.monotonic() - t0 < 3.0


def test_a_key_with_a_passphrase_is_refused_without_prompting(ca: CA) -> None:
    locked = ca.issue("locked", password=b"secret")
    assert _err(TLSConfig(str(ca.path), str(locked.cert), str(locked.key))) == (
        f"TLS key {locked.key} is protected by a passphrase"
        " — use an unencrypted key file (mode 0600); taskfleet never prompts"
    )


def test_an_expired_certificate_is_refused_with_its_date(ca: CA) -> None:
    old = ca.issue("old", not_before=NOW - dt.timedelta(days=30), not_after=NOW - dt.timedelta(1))
    end = (NOW - dt.timedelta(days=1)).strftime("%Y-%m-%d %H:%M UTC")
    assert _err(TLSConfig(str(ca.path), str(old.cert), str(old.key))) == (
        f"TLS certificate {old.cert} expired on {end}"
        " — issue a new certificate: make rotate-tls INVENTORY=<env>"
    )


def test_a_certificate_not_valid_yet_points_at_the_clock(ca: CA) -> None:
    soon = ca.issue("soon", not_before=NOW + dt.timedelta(days=2))
    text = _err(TLSConfig(str(ca.path), str(soon.cert), str(soon.key)))
    assert text.startswith(f"TLS certificate {soon.cert} is not valid before ")
    assert "(this machine's clock says " in text
    assert text.endswith(
        " — set this machine's clock right (timedatectl), or issue a new certificate"
    )


def test_a_file_without_a_certificate_is_refused(ca: CA, tmp_path: Path) -> None:
    good = ca.issue("c")
    junk = tmp_path / "junk.crt"
    junk.write_text("hello\n")
    assert _err(TLSConfig(str(junk), str(good.cert), str(good.key))).startswith(
        f"TLS CA certificate {junk} holds no PEM certificate — pass a PEM file"
    )
    broken = tmp_path / "broken.crt"
    broken.write_text("-----BEGIN CERTIFICATE-----\nAAAA\n-----END CERTIFICATE-----\n")
    assert _err(TLSConfig(str(ca.path), str(broken), str(good.key))).startswith(
        f"TLS certificate {broken} cannot be read: not an X.509 certificate"
    )

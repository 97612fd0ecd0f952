"""Certificates for tests and the benchmark, made with ``cryptography`` (the
control node's Ansible already depends on it; the runtime never imports it).

:func:`make_pki` writes a cluster CA and certificates the way the deploy's
``tls`` role issues them (ECDSA P-256, serverAuth + clientAuth, IP SANs), and
can also make the broken ones the tests need: expired, not yet valid, signed
by another CA, naming another address.
"""

from __future__ import annotations

import datetime as dt
import ipaddress
import os
from dataclasses import dataclass
from pathlib import Path

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

from taskfleet.tls import TLSConfig

UTC = dt.UTC


@dataclass(frozen=True)
class Issued:
    cert: Path
    key: Path


def _name(cn: str) -> x509.Name:
    return x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, cn)])


def _write_key(path: Path, key: ec.EllipticCurvePrivateKey, password: bytes | None = None) -> None:
    enc: serialization.KeySerializationEncryption = (
        serialization.BestAvailableEncryption(password)
        if password
        else serialization.NoEncryption()
    )
    data = key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, enc)
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "wb") as fh:
        fh.write(data)


class CA:
    """A certificate authority in ``folder`` (``<name>-ca.crt``/``.key``)."""

    def __init__(self, folder: Path, name: str = "cluster", days: int = 3650) -> None:
        self.folder = folder
        folder.mkdir(parents=True, exist_ok=True)
        self.key = ec.generate_private_key(ec.SECP256R1())
        now = dt.datetime.now(UTC)
        ski = x509.SubjectKeyIdentifier.from_public_key(self.key.public_key())
        self.cert = (
            x509.CertificateBuilder()
            .subject_name(_name(f"taskfleet {name} CA"))
            .issuer_name(_name(f"taskfleet {name} CA"))
            .public_key(self.key.public_key())
            .serial_number(x509.random_serial_number())
            .not_valid_before(now - dt.timedelta(minutes=5))
            .not_valid_after(now + dt.timedelta(days=days))
            .add_extension(x509.BasicConstraints(ca=True, path_length=0), critical=True)
            .add_extension(
                x509.KeyUsage(
                    digital_signature=False,
                    content_commitment=False,
                    key_encipherment=False,
                    data_encipherment=False,
                    key_agreement=False,
                    key_cert_sign=True,
                    crl_sign=True,
                    encipher_only=False,
                    decipher_only=False,
                ),
                critical=True,
            )
            .add_extension(ski, critical=False)
            .sign(self.key, hashes.SHA256())
        )
        self.path = folder / f"{name}-ca.crt"
        self.path.write_bytes(self.cert.public_bytes(serialization.Encoding.PEM))
        self.name = name

    def issue(
        self,
        name: str,
        ips: tuple[str, ...] = ("127.0.0.1",),
        *,
        not_before: dt.datetime | None = None,
        not_after: dt.datetime | None = None,
        password: bytes | None = None,
    ) -> Issued:
        """A leaf certificate and key for ``name`` with the given IP SANs."""
        key = ec.generate_private_key(ec.SECP256R1())
        now = dt.datetime.now(UTC)
        sans: list[x509.GeneralName] = [x509.DNSName(name)]
        sans += [x509.IPAddress(ipaddress.ip_address(ip)) for ip in ips]
        cert = (
            x509.CertificateBuilder()
            .subject_name(_name(name))
            .issuer_name(self.cert.subject)
            .public_key(key.public_key())
            .serial_number(x509.random_serial_number())
            .not_valid_before(not_before or now - dt.timedelta(minutes=5))
            .not_valid_after(not_after or now + dt.timedelta(days=365))
            .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
            .add_extension(x509.SubjectAlternativeName(sans), critical=False)
            .add_extension(
                x509.ExtendedKeyUsage(
                    [ExtendedKeyUsageOID.SERVER_AUTH, ExtendedKeyUsageOID.CLIENT_AUTH]
                ),
                critical=False,
            )
            .add_extension(
                x509.AuthorityKeyIdentifier.from_issuer_public_key(self.key.public_key()),
                critical=False,
            )
            .sign(self.key, hashes.SHA256())
        )
        crt = self.folder / f"{self.name}-{name}.crt"
        crt.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
        key_path = self.folder / f"{self.name}-{name}.key"
        _write_key(key_path, key, password)
        return Issued(crt, key_path)

    def config(self, name: str, ips: tuple[str, ...] = ("127.0.0.1",)) -> TLSConfig:
        """A TLSConfig for a new certificate of ``name`` under this CA."""
        issued = self.issue(name, ips)
        return TLSConfig(str(self.path), str(issued.cert), str(issued.key))


def make_pki(folder: Path) -> tuple[CA, TLSConfig, TLSConfig]:
    """A cluster CA plus a master and a client configuration (loopback SANs)."""
    ca = CA(folder)
    return ca, ca.config("master"), ca.config("client")

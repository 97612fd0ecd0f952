"""Mutual TLS for the manager protocol (standard library ``ssl`` only).

A cluster has one CA. Every master, worker and client holds a certificate
issued by it (``--tls-ca/--tls-cert/--tls-key``, a profile's ``"tls"``, or
``TLSConfig`` in Python). The rules:

* TLS 1.3 only; no session tickets (nothing resumes, nothing to steal).
* The master requires a client certificate from the cluster's CA
  (``CERT_REQUIRED``); a peer without one never reaches the authkey handshake.
* Clients and workers check the master's certificate against the address they
  dial (IP SANs through ``check_hostname``), so a relay or a stolen address
  cannot pose as the master.
* The authkey handshake still runs, inside TLS: a certificate alone does not
  open the board, and neither does the key alone.

Everything a user can get wrong is checked when the files are loaded, before
any connection, and reported in one line (:class:`~taskfleet.errors.TLSError`):
a missing or unreadable file, a key readable by everyone, a key with a
passphrase, a key that does not belong to the certificate, a certificate that
expired or is not valid yet. Handshake failures that retrying cannot fix
(another CA, an address the certificate does not name, a plaintext peer) are
:class:`~taskfleet.errors.TLSRefused`; see :func:`client_failure` and
:func:`refusal_reason`.

Certificates are parsed with a small DER reader (validity and SANs only): the
standard library has no certificate parser, and the runtime stays stdlib-only.
"""

from __future__ import annotations

import base64
import datetime as dt
import ipaddress
import os
import re
import ssl
import stat
import threading
import time
from dataclasses import dataclass, field
from typing import Final

from taskfleet import defaults
from taskfleet.errors import TLSError, TLSRefused
from taskfleet.protocol import TLSView

UTC = dt.UTC

TLS_REQUIRED: Final = b"#TLS-REQUIRED#"
"""The one frame a TLS master sends a plaintext peer before it closes the
connection; a taskfleet client recognises it and says what to do."""

TLS_RECORD_HANDSHAKE: Final = 0x16
"""First byte of every TLS ClientHello; a plaintext frame never starts with it
(its length prefix would be above 369 MB)."""

_FIX_FILES = (
    "pass the cluster's files: --tls-ca, --tls-cert, --tls-key"
    " (make deploy writes them to inventory/<env>/secrets/tls/)"
)
_FIX_RENEW = "issue a new certificate: make rotate-tls INVENTORY=<env>"
_PEM_CERT = re.compile(rb"-----BEGIN CERTIFICATE-----\s+(.*?)-----END CERTIFICATE-----", re.S)


# -- certificates ------------------------------------------------------------------------


@dataclass(frozen=True)
class CertInfo:
    """What taskfleet reads from a certificate: its validity and its names."""

    not_before: dt.datetime
    not_after: dt.datetime
    ips: tuple[str, ...] = ()
    dns: tuple[str, ...] = ()

    def days_left(self, now: dt.datetime | None = None) -> float:
        """Days until ``not_after`` (negative once expired)."""
        now = now or dt.datetime.now(UTC)
        return (self.not_after - now).total_seconds() / 86400

    def names(self) -> list[str]:
        return [*self.ips, *self.dns]


class _Der:
    """Just enough DER to walk a certificate (X.509, RFC 5280 section 4.1)."""

    def __init__(self, data: bytes) -> None:
        self.data = data

    def read(self, pos: int) -> tuple[int, int, int]:
        """The element at ``pos``: (tag, start of its content, end of its content)."""
        data = self.data
        tag = data[pos]
        length = data[pos + 1]
        pos += 2
        if length & 0x80:
            count = length & 0x7F
            if not 1 <= count <= 4:
                raise ValueError("unsupported DER length")
            length = int.from_bytes(data[pos : pos + count], "big")
            pos += count
        end = pos + length
        if end > len(data):
            raise ValueError("truncated DER")
        return tag, pos, end

    def children(self, start: int, end: int) -> list[tuple[int, int, int]]:
        found = []
        pos = start
        while pos < end:
            tag, cstart, cend = self.read(pos)
            found.append((tag, cstart, cend))
            pos = cend
        return found


def _der_time(tag: int, raw: bytes) -> dt.datetime:
    text = raw.decode("ascii")
    if tag == 0x17:  # UTCTime: YYMMDDHHMMSSZ, years 1950-2049
        year = int(text[:2])
        text = f"{1900 + year if year >= 50 else 2000 + year}{text[2:]}"
    elif tag != 0x18:  # GeneralizedTime: YYYYMMDDHHMMSSZ
        raise ValueError("not a time")
    return dt.datetime.strptime(text, "%Y%m%d%H%M%SZ").replace(tzinfo=UTC)


_SAN_OID = bytes.fromhex("551d11")  # 2.5.29.17 subjectAltName


def cert_info(der: bytes) -> CertInfo:
    """Validity and subject alternative names of a DER certificate; ValueError if malformed."""
    d = _Der(der)
    try:
        _, cstart, cend = d.read(0)
        _, tstart, tend = d.children(cstart, cend)[0]
        fields = d.children(tstart, tend)
        if fields[0][0] == 0xA0:  # [0] version, present in v3 certificates
            fields = fields[1:]
        # serialNumber, signature, issuer, validity, subject, subjectPublicKeyInfo, ...
        _, vstart, vend = fields[3]
        (nb_tag, nb_s, nb_e), (na_tag, na_s, na_e) = d.children(vstart, vend)
        not_before = _der_time(nb_tag, der[nb_s:nb_e])
        not_after = _der_time(na_tag, der[na_s:na_e])
        ips: list[str] = []
        dns: list[str] = []
        for tag, start, end in fields[6:]:
            if tag != 0xA3:  # [3] extensions
                continue
            (_, seq_s, seq_e), *_ = d.children(start, end)
            for _, ext_s, ext_e in d.children(seq_s, seq_e):
                parts = d.children(ext_s, ext_e)
                if der[parts[0][1] : parts[0][2]] != _SAN_OID:
                    continue
                _, oct_s, _ = parts[-1]  # extnValue OCTET STRING holding GeneralNames
                _, gn_s, gn_e = d.read(oct_s)
                for gtag, gs, ge in d.children(gn_s, gn_e):
                    if gtag == 0x87:  # [7] iPAddress
                        ips.append(str(ipaddress.ip_address(der[gs:ge])))
                    elif gtag == 0x82:  # [2] dNSName
                        dns.append(der[gs:ge].decode("ascii", "replace"))
    except (IndexError, ValueError, UnicodeDecodeError) as exc:
        raise ValueError(f"not an X.509 certificate ({exc})") from None
    return CertInfo(not_before, not_after, tuple(ips), tuple(dns))


def pem_certificates(data: bytes) -> list[bytes]:
    """The DER bytes of every certificate in a PEM file, in order."""
    return [base64.b64decode(body) for body in _PEM_CERT.findall(data)]


def _when(moment: dt.datetime) -> str:
    return moment.strftime("%Y-%m-%d %H:%M UTC")


# -- the files -----------------------------------------------------------------------------


def _read(path: str, what: str, *, private: bool = False) -> bytes:
    try:
        st = os.stat(path)
    except FileNotFoundError:
        raise TLSError(f"{what} {path} does not exist", _FIX_FILES) from None
    except OSError as exc:
        raise TLSError(
            f"cannot read {what} {path}: {exc.strerror}", "run as a user that can read it"
        ) from None
    if not stat.S_ISREG(st.st_mode):
        raise TLSError(f"{what} {path} is not a regular file", _FIX_FILES)
    if private and st.st_mode & (stat.S_IROTH | stat.S_IWOTH):
        raise TLSError(
            f"{what} {path} is accessible by every user (mode {stat.S_IMODE(st.st_mode):04o})",
            f"chmod 600 {path}",
        )
    try:
        with open(path, "rb") as fh:
            return fh.read(1024 * 1024)
    except OSError as exc:
        raise TLSError(
            f"cannot read {what} {path}: {exc.strerror}",
            "run as a user that can read it (containers: owner uid 10001, mode 0400)",
        ) from None


def _check_dates(info: CertInfo, what: str, path: str, now: dt.datetime) -> None:
    if now > info.not_after:
        fix = "make a new CA (docs/security.md, replacing the CA)" if "CA" in what else _FIX_RENEW
        raise TLSError(f"{what} {path} expired on {_when(info.not_after)}", fix)
    if now < info.not_before:
        raise TLSError(
            f"{what} {path} is not valid before {_when(info.not_before)}"
            f" (this machine's clock says {_when(now)})",
            "set this machine's clock right (timedatectl), or issue a new certificate",
        )


class _PassphraseAsked(Exception):
    """The key file is encrypted: OpenSSL asked for a passphrase (we never prompt)."""


def _no_passphrase() -> str:
    raise _PassphraseAsked


@dataclass(frozen=True)
class TLSConfig:
    """A peer's TLS files: the cluster CA, its own certificate and that certificate's key.

    The same three files serve a master (server side) and a worker or client
    (client side): the deploy issues certificates good for both. Contexts are
    built on first use and kept; :meth:`check` reads and checks the files and
    raises TLSError with the fix.
    """

    ca: str
    cert: str
    key: str
    _contexts: dict[bool, ssl.SSLContext] = field(
        default_factory=dict, init=False, repr=False, compare=False
    )
    _lock: threading.Lock = field(
        default_factory=threading.Lock, init=False, repr=False, compare=False
    )

    def check(self, now: dt.datetime | None = None) -> tuple[CertInfo, CertInfo]:
        """Read and check the three files; return (own certificate, CA certificate) info.

        Raises TLSError: a file missing/unreadable/not PEM, a key readable by
        everyone, a certificate or CA outside its validity period.
        """
        now = now or dt.datetime.now(UTC)
        infos = []
        for path, what in ((self.cert, "TLS certificate"), (self.ca, "TLS CA certificate")):
            ders = pem_certificates(_read(path, what))
            if not ders:
                raise TLSError(
                    f"{what} {path} holds no PEM certificate",
                    "pass a PEM file (-----BEGIN CERTIFICATE-----); " + _FIX_FILES,
                )
            try:
                info = cert_info(ders[0])
            except ValueError as exc:
                raise TLSError(f"{what} {path} cannot be read: {exc}", _FIX_FILES) from None
            _check_dates(info, what, path, now)
            infos.append(info)
        _read(self.key, "TLS key", private=True)
        return infos[0], infos[1]

    def context(self, server_side: bool) -> ssl.SSLContext:
        """The SSL context for a master (``server_side``) or a worker/client; built once."""
        with self._lock:
            ctx = self._contexts.get(server_side)
            if ctx is None:
                self.check()
                ctx = self._build(server_side)
                self._contexts[server_side] = ctx
            return ctx

    def _build(self, server_side: bool) -> ssl.SSLContext:
        protocol = ssl.PROTOCOL_TLS_SERVER if server_side else ssl.PROTOCOL_TLS_CLIENT
        ctx = ssl.SSLContext(protocol)
        ctx.minimum_version = ssl.TLSVersion.TLSv1_3
        ctx.verify_mode = ssl.CERT_REQUIRED
        if server_side:
            ctx.num_tickets = 0  # no resumption: nothing to cache, nothing to steal
        else:
            ctx.check_hostname = True  # the dialled address must be in the master's SANs
        try:
            ctx.load_verify_locations(cafile=self.ca)
        except ssl.SSLError as exc:
            raise TLSError(
                f"TLS CA certificate {self.ca} cannot be loaded ({_reason(exc)})", _FIX_FILES
            ) from None
        try:
            self._load_chain(ctx)
        except _PassphraseAsked:
            raise TLSError(
                f"TLS key {self.key} is protected by a passphrase",
                "use an unencrypted key file (mode 0600); taskfleet never prompts",
            ) from None
        except ssl.SSLError as exc:
            if "KEY_VALUES_MISMATCH" in str(exc):
                raise TLSError(
                    f"TLS key {self.key} does not belong to certificate {self.cert}",
                    "pass the key that was issued with the certificate",
                ) from None
            raise TLSError(
                f"TLS certificate {self.cert} or key {self.key} cannot be loaded ({_reason(exc)})",
                "pass a PEM certificate and its PEM private key; " + _FIX_FILES,
            ) from None
        return ctx

    def _load_chain(self, ctx: ssl.SSLContext) -> None:
        """Load the certificate and its key. A key that does not match is read again for
        ``defaults.TLS_FILES_SETTLE`` seconds first: a rotation replaces the two files one
        after the other, and a process starting between the two must not fail."""
        settle = time.monotonic() + defaults.TLS_FILES_SETTLE
        while True:
            try:
                ctx.load_cert_chain(self.cert, self.key, password=_no_passphrase)
                return
            except ssl.SSLError as exc:
                if "KEY_VALUES_MISMATCH" not in str(exc) or time.monotonic() >= settle:
                    raise
            time.sleep(0.2)


def _reason(exc: ssl.SSLError) -> str:
    return str(getattr(exc, "reason", None) or exc).lower().replace("_", " ")


# -- handshake failures ----------------------------------------------------------------------

# OpenSSL's X509_V_ERR_* codes that an SSLCertVerificationError carries.
_V_NOT_YET_VALID = 9
_V_EXPIRED = 10
_V_UNKNOWN_ISSUER = {2, 18, 19, 20, 21}
_V_NAME_MISMATCH = {62, 64}  # hostname / IP address mismatch

# Reasons on an SSLError when the other end does not speak TLS at all.
_NOT_TLS = {
    "WRONG_VERSION_NUMBER",
    "PACKET_LENGTH_TOO_LONG",
    "RECORD_LAYER_FAILURE",
    "UNEXPECTED_RECORD",
    "HTTP_REQUEST",
    "UNKNOWN_PROTOCOL",
}
# TLS alerts a master sends when it does not accept our certificate.
_ALERTS = {
    "TLSV1_ALERT_UNKNOWN_CA": "it is not issued by the master's CA",
    "SSLV3_ALERT_CERTIFICATE_EXPIRED": "the master says it has expired",
    "SSLV3_ALERT_BAD_CERTIFICATE": "the master calls it bad",
    "SSLV3_ALERT_CERTIFICATE_UNKNOWN": "the master does not accept it",
    "SSLV3_ALERT_UNSUPPORTED_CERTIFICATE": "the master does not support it",
    "TLSV13_ALERT_CERTIFICATE_REQUIRED": "the master requires one",
}


def client_failure(exc: BaseException, where: str, host: str, tls: TLSConfig) -> TLSRefused | None:
    """The one-line error for a client-side handshake failure that retrying cannot fix.

    None for failures that may pass (a reset, a timeout, a master restarting):
    the caller keeps treating those as transport errors and retries.
    """
    if isinstance(exc, ssl.SSLCertVerificationError):
        code = exc.verify_code
        if code in _V_NAME_MISMATCH:
            return TLSRefused(
                f"the master's TLS certificate at {where} is not valid for {host}"
                f" ({exc.verify_message})",
                "connect to an address the certificate names (the master's bind address),"
                " or reissue it for this address: make rotate-tls INVENTORY=<env>",
            )
        if code == _V_EXPIRED:
            return TLSRefused(
                f"the master's TLS certificate at {where} has expired",
                f"renew it: {_FIX_RENEW.split(': ', 1)[1]}",
            )
        if code == _V_NOT_YET_VALID:
            return TLSRefused(
                f"the master's TLS certificate at {where} is not valid yet",
                "compare the clocks of the master and this machine (timedatectl)",
            )
        if code in _V_UNKNOWN_ISSUER:
            return TLSRefused(
                f"the master at {where} presented a TLS certificate not issued by the CA in"
                f" {tls.ca}",
                f"use the CA of the master's cluster (--tls-ca), or check that {where} is"
                " the right master",
            )
        return TLSRefused(
            f"the master's TLS certificate at {where} was refused ({exc.verify_message})",
            "check the master's certificate (openssl x509 -text) and the CA",
        )
    if isinstance(exc, ssl.SSLError):
        reason = str(getattr(exc, "reason", "") or "")
        if reason in _NOT_TLS:
            return TLSRefused(
                f"the master at {where} does not speak TLS (it runs without --tls-*)",
                "deploy the master with TLS (taskfleet_tls: true), or connect without the"
                " --tls-* options to a plaintext cluster",
            )
        if reason in _ALERTS:
            return TLSRefused(
                f"the master at {where} refused our TLS certificate {tls.cert}: {_ALERTS[reason]}",
                "use a certificate issued by the cluster's CA (make deploy writes one to"
                " inventory/<env>/secrets/tls/)",
            )
        if reason == "TLSV1_ALERT_PROTOCOL_VERSION":
            return TLSRefused(
                f"the master at {where} refused TLS 1.3", "run the same taskfleet everywhere"
            )
    return None


def refusal_reason(exc: BaseException) -> str:
    """Why the master refused a peer's TLS handshake, for its log (never sent to the peer)."""
    if isinstance(exc, ssl.SSLCertVerificationError):
        code = exc.verify_code
        if code == _V_EXPIRED:
            return "its TLS certificate has expired"
        if code == _V_NOT_YET_VALID:
            return "its TLS certificate is not valid yet (check its clock)"
        if code in _V_UNKNOWN_ISSUER:
            return "its TLS certificate is not issued by the cluster's CA"
        return f"its TLS certificate was refused ({exc.verify_message})"
    if isinstance(exc, ssl.SSLError):
        reason = str(getattr(exc, "reason", "") or "")
        if reason == "PEER_DID_NOT_RETURN_A_CERTIFICATE":
            return "it sent no TLS client certificate"
        if reason in _NOT_TLS:
            return "it does not speak TLS"
        if reason in ("UNSUPPORTED_PROTOCOL", "NO_PROTOCOLS_AVAILABLE"):
            return "it does not offer TLS 1.3"
        return f"TLS handshake failed ({_reason(exc)})"
    return ""


def describe(info: CertInfo, ca: CertInfo, now: dt.datetime | None = None) -> TLSView:
    """The ``tls`` block of ``status --json`` (docs/interfaces.md)."""
    now = now or dt.datetime.now(UTC)
    return TLSView(
        enabled=True,
        cert_not_after=info.not_after.strftime("%Y-%m-%dT%H:%M:%SZ"),
        cert_days_left=round(info.days_left(now), 1),
        cert_names=info.names(),
        ca_not_after=ca.not_after.strftime("%Y-%m-%dT%H:%M:%SZ"),
        ca_days_left=round(ca.days_left(now), 1),
    )

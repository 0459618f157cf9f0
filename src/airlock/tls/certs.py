"""Checking a certificate and its private key before the gateway serves with them.

A pair that would fail only at a client's handshake (a key of another certificate, a name the
certificate does not cover, dates outside its validity) or that leaks its key (a key file other
users can read) is refused here, with every problem named at once and each tied to its file.
"""

from __future__ import annotations

import ipaddress
import stat
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path

from cryptography import x509
from cryptography.exceptions import InvalidSignature, UnsupportedAlgorithm
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.x509.oid import ExtendedKeyUsageOID

from airlock.errors import InvalidInput

# Owner-only: a key other local users can read is a key they can serve the gateway's name with.
KEY_MODES = (0o600, 0o400)


@dataclass(frozen=True)
class CertInfo:
    subject: str
    names: list[str]  # the subjectAltName entries, DNS names then IP addresses
    not_before: datetime
    not_after: datetime
    fingerprint: str  # SHA-256 of the DER certificate, as `openssl x509 -fingerprint -sha256`
    self_signed: bool

    def covers(self, name: str) -> bool:
        return covers(self.names, name)

    def to_dict(self) -> dict:
        return {"subject": self.subject, "names": self.names, "not_before": self.not_before.isoformat(),
                "not_after": self.not_after.isoformat(), "fingerprint": self.fingerprint,
                "self_signed": self.self_signed}


def covers(names: list[str], name: str) -> bool:
    """Whether a certificate with these SANs is valid for `name`, as a TLS client decides it: an
    IP address only by an IP SAN, a DNS name exactly or by a wildcard for its leftmost label."""
    ip = parse_ip(name)
    if ip is not None:
        return any(parse_ip(n) == ip for n in names)
    wanted = name.lower().rstrip(".")
    for san in (n.lower() for n in names if parse_ip(n) is None):
        if san == wanted:
            return True
        if san.startswith("*.") and "." in wanted and wanted.split(".", 1)[1] == san[2:]:
            return True
    return False


def parse_ip(text: str) -> ipaddress.IPv4Address | ipaddress.IPv6Address | None:
    try:
        return ipaddress.ip_address(text.strip("[]"))
    except ValueError:
        return None


def read_file(path: Path, what: str) -> bytes:
    try:
        return path.read_bytes()
    except OSError as exc:
        raise InvalidInput(f"cannot read the {what} {path}: {exc.strerror or exc}") from None


def load_certificate(path: Path) -> x509.Certificate:
    """The first certificate of a PEM file (the server's own; any others are its chain)."""
    data = read_file(path, "certificate")
    try:
        return x509.load_pem_x509_certificates(data)[0]
    except ValueError:
        raise InvalidInput(f"the certificate {path} is not a PEM certificate "
                           "(expected a '-----BEGIN CERTIFICATE-----' block)") from None


def load_private_key(path: Path):
    data = read_file(path, "private key")
    try:
        return serialization.load_pem_private_key(data, password=None)
    except TypeError:
        raise InvalidInput(f"the private key {path} is encrypted: the gateway starts unattended, so it needs "
                           "an unencrypted key protected by its file mode (0600)") from None
    except (ValueError, UnsupportedAlgorithm):
        raise InvalidInput(f"the private key {path} is not a PEM private key "
                           "(expected a '-----BEGIN ... PRIVATE KEY-----' block)") from None


def key_mode_problem(path: Path) -> str | None:
    mode = stat.S_IMODE(path.stat().st_mode)
    if mode in KEY_MODES:
        return None
    return (f"the private key {path} has mode {mode:04o}; it must be 0600 or 0400 (readable by its owner "
            f"only): chmod 600 {path}")


def cert_info(cert: x509.Certificate) -> CertInfo:
    try:
        san = cert.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
        names = san.get_values_for_type(x509.DNSName) + [str(ip) for ip in san.get_values_for_type(x509.IPAddress)]
    except x509.ExtensionNotFound:
        names = []
    return CertInfo(subject=cert.subject.rfc4514_string(), names=names, not_before=cert.not_valid_before_utc,
                    not_after=cert.not_valid_after_utc,
                    fingerprint=cert.fingerprint(hashes.SHA256()).hex(":").upper(),
                    self_signed=_self_signed(cert))


def _self_signed(cert: x509.Certificate) -> bool:
    if cert.issuer != cert.subject:
        return False
    try:
        cert.verify_directly_issued_by(cert)
    except (InvalidSignature, ValueError, TypeError):
        return False
    return True


def _server_auth_problem(cert: x509.Certificate, path: Path) -> str | None:
    try:
        usages = cert.extensions.get_extension_for_class(x509.ExtendedKeyUsage).value
    except x509.ExtensionNotFound:
        return None  # no EKU at all: any use, servers included
    if ExtendedKeyUsageOID.SERVER_AUTH in usages:
        return None
    return f"the certificate {path} is not for TLS servers (its extendedKeyUsage lacks serverAuth)"


def check_pair(cert_path: Path, key_path: Path, name: str | None = None, *,
               now: datetime | None = None) -> CertInfo:
    """The certificate's facts once `key_path` holds its private key, owner-only, and it is valid
    now (and for `name`, when given); otherwise InvalidInput listing every problem found."""
    cert_path, key_path = Path(cert_path), Path(key_path)
    cert = load_certificate(cert_path)
    key = load_private_key(key_path)
    info = cert_info(cert)
    now = now or datetime.now(UTC)
    problems = []
    if (problem := key_mode_problem(key_path)) is not None:
        problems.append(problem)
    if _public_der(key.public_key()) != _public_der(cert.public_key()):
        problems.append(f"the private key {key_path} is not the key of the certificate {cert_path} "
                        "(its public key differs: a key of another certificate)")
    if now < info.not_before:
        problems.append(f"the certificate {cert_path} is not valid yet: from {info.not_before:%Y-%m-%d %H:%M} UTC")
    if now > info.not_after:
        problems.append(f"the certificate {cert_path} expired on {info.not_after:%Y-%m-%d %H:%M} UTC")
    if not info.names:
        problems.append(f"the certificate {cert_path} has no subjectAltName: clients look for the server's name "
                        "there only (not in the subject's CN), so none would accept it")
    elif name is not None and not info.covers(name):
        problems.append(f"the certificate {cert_path} is not for {name}: it covers {', '.join(info.names)}")
    if (problem := _server_auth_problem(cert, cert_path)) is not None:
        problems.append(problem)
    if problems:
        raise InvalidInput(f"the TLS certificate {cert_path} and key {key_path} are refused", problems=problems)
    return info


def _public_der(public_key) -> bytes:
    return public_key.public_bytes(serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo)

"""A self-signed server certificate for the gateway, for sites without an internal CA.

`ensure_self_signed` is what provisioning calls: it keeps a pair that is already valid for every
name asked for, so running it twice changes nothing the second time (and clients that trust the
certificate keep trusting it), and makes a new pair only when there is none or it is unusable.
"""

from __future__ import annotations

import re
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import NamedTuple

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

from airlock.errors import InvalidInput
from airlock.tls.certs import CertInfo, cert_info, check_pair, parse_ip
from airlock.trust.atomic import write_atomic

# The longest lifetime Apple's and the browsers' policies accept for a server certificate.
DEFAULT_DAYS = 825
# A client whose clock runs a little behind the host's still accepts a fresh certificate.
BACKDATE = timedelta(minutes=5)
_LABEL = re.compile(r"(?!-)[A-Za-z0-9-]{1,63}(?<!-)\Z")
_CN_MAX = 64  # X.520's upper bound on a commonName


class Ensured(NamedTuple):
    info: CertInfo
    changed: bool
    why: str  # why a new pair was made, or why the existing one was kept


def check_names(names: list[str]) -> list[str]:
    """The names without duplicates, in order; InvalidInput listing every one that is neither an
    IP address nor a DNS name (a `*.` wildcard allowed as its first label)."""
    out, bad = [], []
    for raw in names:
        name = raw.strip()
        if parse_ip(name) is not None:
            name = str(parse_ip(name))
        elif not _dns_name(name):
            bad.append(f"{raw!r} is neither an IP address nor a DNS name")
            continue
        if name.lower() not in (n.lower() for n in out):
            out.append(name)
    if bad:
        raise InvalidInput("the certificate's names are invalid", problems=bad)
    if not out:
        raise InvalidInput("a certificate needs at least one name (--name): the host's DNS name or IP address")
    return out


def _dns_name(name: str) -> bool:
    labels = name.rstrip(".").split(".")
    if labels and labels[0] == "*" and len(labels) > 2:
        labels = labels[1:]
    return len(name) <= 253 and all(_LABEL.match(label) for label in labels)


def generate_self_signed(cert_path: Path, key_path: Path, names: list[str], days: int = DEFAULT_DAYS) -> CertInfo:
    """Write a new ECDSA P-256 key (mode 0600) and a self-signed server certificate for `names`
    (IP addresses as IP SANs), each file replaced in one step."""
    cert_path, key_path = Path(cert_path), Path(key_path)
    names = check_names(names)
    if days < 1:
        raise InvalidInput(f"a certificate must be valid for at least 1 day, not {days}")
    if cert_path.resolve() == key_path.resolve():
        raise InvalidInput(f"the certificate and the key must be two files, not both {cert_path}")
    key = ec.generate_private_key(ec.SECP256R1())
    now = datetime.now(UTC)
    common = names[0] if len(names[0]) <= _CN_MAX else "airlock gateway"
    subject = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, common),
                         x509.NameAttribute(NameOID.ORGANIZATION_NAME, "airlock")])
    sans = [x509.IPAddress(parse_ip(n)) if parse_ip(n) is not None else x509.DNSName(n) for n in names]
    cert = (x509.CertificateBuilder()
            .subject_name(subject).issuer_name(subject)
            .public_key(key.public_key())
            .serial_number(x509.random_serial_number())
            .not_valid_before(now - BACKDATE).not_valid_after(now + timedelta(days=days))
            .add_extension(x509.SubjectAlternativeName(sans), critical=False)
            .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
            .add_extension(x509.KeyUsage(digital_signature=True, content_commitment=False, key_encipherment=False,
                                         data_encipherment=False, key_agreement=False, key_cert_sign=False,
                                         crl_sign=False, encipher_only=False, decipher_only=False), critical=True)
            .add_extension(x509.ExtendedKeyUsage([ExtendedKeyUsageOID.SERVER_AUTH]), critical=False)
            .add_extension(x509.SubjectKeyIdentifier.from_public_key(key.public_key()), critical=False)
            .sign(key, hashes.SHA256()))
    for path in (cert_path, key_path):
        path.parent.mkdir(parents=True, exist_ok=True)
    # The key first: a crash between the two writes leaves a pair that does not match, which the
    # next ensure_self_signed replaces, never a certificate whose key was lost.
    write_atomic(key_path, key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                                             serialization.NoEncryption()), 0o600)
    write_atomic(cert_path, cert.public_bytes(serialization.Encoding.PEM), 0o644)
    return cert_info(cert)


def ensure_self_signed(cert_path: Path, key_path: Path, names: list[str], days: int = DEFAULT_DAYS) -> Ensured:
    """Keep the pair at these paths when it is usable (readable, matching, owner-only key, valid
    now) and covers every name; otherwise make a new self-signed one. `changed` says which."""
    names = check_names(names)
    try:
        info = check_pair(cert_path, key_path)
    except InvalidInput as exc:
        why = str(exc)
    else:
        missing = [n for n in names if not info.covers(n)]
        if not missing:
            return Ensured(info, False, "the existing pair is valid and covers " + ", ".join(names))
        why = f"the existing certificate {cert_path} does not cover {', '.join(missing)}"
    return Ensured(generate_self_signed(cert_path, key_path, names, days), True, why)

"""Real certificates (made by `openssl req`, and with chosen dates by cryptography) and a real
gateway process serving TLS."""

from __future__ import annotations

import os
import ssl
import subprocess
import sys
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID

from airlock.config import Settings


@dataclass
class Pair:
    cert: Path
    key: Path


def make_cert(folder: Path, names: list[str], *, not_before: datetime, not_after: datetime,
              stem: str = "server") -> Pair:
    """A self-signed pair with exactly these dates, which airlock's generator never makes."""
    key = ec.generate_private_key(ec.SECP256R1())
    subject = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, names[0])])
    cert = (x509.CertificateBuilder().subject_name(subject).issuer_name(subject).public_key(key.public_key())
            .serial_number(x509.random_serial_number()).not_valid_before(not_before).not_valid_after(not_after)
            .add_extension(x509.SubjectAlternativeName([x509.DNSName(n) for n in names]), critical=False)
            .sign(key, hashes.SHA256()))
    pair = Pair(folder / f"{stem}.crt", folder / f"{stem}.key")
    pair.cert.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    pair.key.write_bytes(key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.TraditionalOpenSSL,
                                           serialization.NoEncryption()))
    pair.key.chmod(0o600)
    return pair


def openssl_pair(folder: Path, san: str, *, stem: str = "openssl", key_type: str = "ec") -> Pair:
    """A self-signed pair from `openssl req -x509`, as an operator would make one by hand."""
    pair = Pair(folder / f"{stem}.crt", folder / f"{stem}.key")
    newkey = ["-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:prime256v1"] if key_type == "ec" else ["-newkey", "rsa:2048"]
    subprocess.run(["openssl", "req", "-x509", *newkey, "-nodes", "-keyout", str(pair.key), "-out", str(pair.cert),
                    "-days", "30", "-subj", "/CN=openssl.test", "-addext", f"subjectAltName={san}"],
                   check=True, capture_output=True)
    pair.key.chmod(0o600)
    return pair


def trusting(cert: Path) -> ssl.SSLContext:
    """A client context that trusts this one certificate and nothing else."""
    return ssl.create_default_context(cafile=str(cert))


@dataclass
class TlsGateway:
    url: str
    port: int
    key: str
    settings: Settings
    pair: Pair


def _env(settings: Settings, pair: Pair) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("AIRLOCK_")}
    env.update(AIRLOCK_HOME=str(settings.home), AIRLOCK_GATEWAY_PORT=str(settings.gateway_port),
               AIRLOCK_MODELS_DIR=str(settings.models_dir), AIRLOCK_TLS_CERT=str(pair.cert),
               AIRLOCK_TLS_KEY=str(pair.key))
    return env


def gateway_command(settings: Settings, pair: Pair, **kwargs) -> subprocess.Popen:
    return subprocess.Popen([sys.executable, "-m", "airlock", "gateway"], env=_env(settings, pair),
                            stdin=subprocess.DEVNULL, start_new_session=True, **kwargs)


def past(days: int) -> datetime:
    return datetime.now(UTC) - timedelta(days=days)

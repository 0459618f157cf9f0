"""How a client trusts the gateway's certificate without switching verification off."""

from __future__ import annotations

import ssl
from pathlib import Path

from airlock.tls.certs import cert_info, load_certificate


def client_context(cert_path: Path) -> ssl.SSLContext:
    """An SSL context that verifies the gateway against its configured certificate file.

    A self-signed certificate is its own and only trust anchor. A certificate a CA issued is
    checked against the system's CAs, and the file's certificates (the server's, its chain) are
    anchors too, so one from an internal CA that is not installed system-wide still verifies.
    """
    cert_path = Path(cert_path)
    if cert_info(load_certificate(cert_path)).self_signed:
        return ssl.create_default_context(cafile=str(cert_path))
    context = ssl.create_default_context()
    context.load_verify_locations(cafile=str(cert_path))
    context.verify_flags |= ssl.VERIFY_X509_PARTIAL_CHAIN
    return context

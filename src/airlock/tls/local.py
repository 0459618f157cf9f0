"""The gateway's configured pair, as the gateway and the supervisor check it, and the gateway as
this host's own processes reach it.

Verification always stays on: a probe that accepted any certificate would call a gateway ready
that no real client can use, and could be answered by whoever took the port.
"""

from __future__ import annotations

import ssl
from dataclasses import dataclass, field
from urllib.parse import urlsplit

from airlock.config import Settings
from airlock.errors import InvalidInput
from airlock.tls.certs import CertInfo, cert_info, check_pair, load_certificate
from airlock.tls.client import client_context


def check_configured(settings: Settings) -> CertInfo:
    """AIRLOCK_TLS_CERT and AIRLOCK_TLS_KEY checked as a pair; InvalidInput naming both otherwise.
    uvicorn alone would start on a wrong pair only to fail every handshake, and never look at the
    key's file mode."""
    try:
        return check_pair(settings.tls_cert, settings.tls_key)
    except InvalidInput as exc:
        raise InvalidInput(f"the gateway does not start with AIRLOCK_TLS_CERT={settings.tls_cert} and "
                           f"AIRLOCK_TLS_KEY={settings.tls_key}", problems=exc.problems or [exc.message]) from None


@dataclass
class LocalGateway:
    """The gateway as this host's own processes call it: `url` with `verify` for the client and
    `extensions` for each request (the name to check the certificate against, when the listening
    address is not one of the certificate's names)."""

    url: str
    verify: ssl.SSLContext | bool = True
    extensions: dict = field(default_factory=dict)

    @property
    def client_url(self) -> str:
        """The URL to give a client: under the certificate's name when the address is not one."""
        name = self.extensions.get("sni_hostname")
        if name is None:
            return self.url
        return f"https://{name}:{urlsplit(self.url).port}"


def local_gateway(settings: Settings) -> LocalGateway:
    if not settings.tls_enabled:
        return LocalGateway(settings.gateway_url)
    info = cert_info(load_certificate(settings.tls_cert))
    extensions = {}
    if not info.covers(settings.gateway_host) and info.names:
        # The gateway listens on an address (127.0.0.1, 0.0.0.0) its certificate need not name;
        # the connection still goes there, and the certificate is checked for a name it does hold.
        extensions["sni_hostname"] = info.names[0].replace("*", "gateway", 1)
    return LocalGateway(settings.gateway_url, client_context(settings.tls_cert), extensions)

"""TLS for the gateway: check a certificate and key pair, make a self-signed one, trust it."""

from airlock.tls.certs import CertInfo, check_pair
from airlock.tls.client import client_context
from airlock.tls.generate import DEFAULT_DAYS, Ensured, ensure_self_signed, generate_self_signed
from airlock.tls.local import LocalGateway, check_configured, local_gateway

__all__ = ["DEFAULT_DAYS", "CertInfo", "Ensured", "LocalGateway", "check_configured", "check_pair", "client_context",
           "ensure_self_signed", "generate_self_signed", "local_gateway"]

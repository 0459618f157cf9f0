"""`airlock tls ...` commands: thin adapters over airlock.tls, with JSON for provisioning."""

from __future__ import annotations

from datetime import UTC, datetime
from pathlib import Path

import typer

from airlock.cli.common import command, console, print_json

app = typer.Typer(
    no_args_is_help=True,
    help="TLS for the gateway: check a certificate and key pair, or make a self-signed one.",
)

CERT = typer.Option(..., "--cert", help="The PEM certificate (the server's first, then any chain).")
KEY = typer.Option(..., "--key", help="Its unencrypted PEM private key (mode 0600 or 0400).")


def _describe(info, cert: Path, key: Path) -> None:
    left = (info.not_after - datetime.now(UTC)).days
    rows = [("certificate", str(cert)), ("key", f"{key} (matches; owner-only)"), ("subject", info.subject),
            ("names", ", ".join(info.names)),
            ("valid", f"{info.not_before:%Y-%m-%d %H:%M} to {info.not_after:%Y-%m-%d %H:%M} UTC ({left} days left)"),
            ("self-signed", "yes" if info.self_signed else "no"), ("sha256", info.fingerprint)]
    for label, value in rows:
        console.print(f"{label + ':':<13}{value}", highlight=False, soft_wrap=True)


@app.command("check")
@command
def check_cmd(
    cert: Path = CERT,
    key: Path = KEY,
    name: str | None = typer.Option(None, "--name", help="Also require the certificate to cover this DNS "
                                                         "name or IP address."),
    json_out: bool = typer.Option(False, "--json", help="Print subject, names, not_before, not_after, "
                                                        "fingerprint and self_signed as JSON."),
) -> None:
    """Check that a certificate and key are a usable pair for the gateway; exit 2 naming each problem.

    Refused: an unreadable or non-PEM file, a key of another certificate, a key readable by group
    or others, a certificate outside its validity dates, or one that does not cover --name.
    Prints the subject, names, validity and SHA-256 fingerprint (as openssl prints it).
    """
    from airlock.tls import check_pair

    info = check_pair(cert, key, name)
    if json_out:
        return print_json(info.to_dict())
    _describe(info, cert, key)


@app.command("generate")
@command
def generate_cmd(
    cert: Path = CERT,
    key: Path = KEY,
    names: list[str] = typer.Option(..., "--name", help="A DNS name or IP address the certificate is for. "
                                                        "Repeatable; the first is also its subject's CN."),
    days: int = typer.Option(825, "--days", min=1, help="Days the certificate is valid."),
    json_out: bool = typer.Option(False, "--json", help="Print fingerprint, changed, names and not_after as JSON."),
) -> None:
    """Make a self-signed certificate (ECDSA P-256) and key (0600) unless a valid pair covering every
    --name is there already; `changed` says whether it made one.

    An existing pair that is usable and covers the names is kept as it is, so a second run changes
    nothing and clients that trust the certificate keep trusting it. A missing, unusable or too
    narrow one is replaced.
    """
    from airlock.tls import ensure_self_signed

    info, changed, why = ensure_self_signed(cert, key, names, days)
    if json_out:
        return print_json({"fingerprint": info.fingerprint, "changed": changed, "names": info.names,
                           "not_after": info.not_after.isoformat()})
    console.print(("made a new pair: " if changed else "kept: ") + why, highlight=False, soft_wrap=True)
    _describe(info, cert, key)
    console.print(f"changed: {'true' if changed else 'false'}", highlight=False)

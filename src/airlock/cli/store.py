"""`airlock store ...`: the artifact store as provisioning sees it (thin adapters over airlock.store)."""

from __future__ import annotations

import dataclasses

import typer

from airlock.cli.common import command, print_json

app = typer.Typer(no_args_is_help=True)


@app.command("init")
@command
def init(
    versioning: bool = typer.Option(True, "--versioning/--no-versioning",
                                    help="Turn bucket versioning on where the server supports it."),
    json_out: bool = typer.Option(False, "--json", help="Print what was found and done as JSON."),
) -> None:
    """Create the S3 store's bucket (AIRLOCK_S3_*) if it is missing and turn versioning on; says
    whether anything changed, so a provisioning run that repeats it reports no change."""
    from airlock.config import get_settings
    from airlock.store.bucket import ensure_bucket

    settings = get_settings()
    if settings.store_backend != "s3":
        raise typer.BadParameter("the store backend is the local folder; set AIRLOCK_STORE_BACKEND=s3",
                                 param_hint="AIRLOCK_STORE_BACKEND")
    state = ensure_bucket(endpoint=settings.s3_endpoint, access_key=settings.s3_access_key,
                          secret_key=settings.s3_secret_key, bucket=settings.s3_bucket,
                          secure=settings.s3_secure, versioning=versioning, ca=settings.s3_ca)
    if json_out:
        print_json(dataclasses.asdict(state))
    else:
        typer.echo(f"bucket {state.bucket} on {state.endpoint}: {'created' if state.created else 'present'}; "
                   f"versioning {state.versioning}")

"""`airlock apikey ...` commands: thin adapters over the service functions."""

from __future__ import annotations

import typer

from airlock.cli.common import cli_actor, command, console, open_airlock, print_json

app = typer.Typer(
    no_args_is_help=True,
    help="API keys that internal applications send to the gateway as 'Authorization: Bearer <key>'.",
)


@app.command("create")
@command
def create(
    name: str = typer.Option(..., "--name", "-n", help="What the key is for: an application or a person."),
    role: str = typer.Option("inference", "--role", help="inference (only /v1), trainer (datasets and runs), "
                             "approver (signs off promotions) or admin (everything)."),
    models: str = typer.Option(None, "--models", show_default=False,
                               help="Comma-separated aliases the key may call (default: every model)."),
    expires: str = typer.Option(None, "--expires", show_default=False,
                                help="When the key stops working: a duration (90d, 12h, 30m, 2w) or an ISO date."),
    rpm: int = typer.Option(None, "--rpm", show_default=False,
                            help="Requests per minute (default: AIRLOCK_DEFAULT_RPM; 0 means no limit)."),
    tpm: int = typer.Option(None, "--tpm", show_default=False,
                            help="Tokens per minute (default: AIRLOCK_DEFAULT_TPM; 0 means no limit)."),
    max_tokens: int = typer.Option(0, "--max-tokens", help="The output tokens a completion from this key gets when "
                                   "it names no max_tokens (0: AIRLOCK_DEFAULT_MAX_TOKENS); the gateway's cap, "
                                   "AIRLOCK_MAX_COMPLETION_TOKENS, still bounds n x max_tokens."),
    holder: str = typer.Option(None, "--holder", show_default=False,
                               help="The person the key is for (lower-case, e.g. alice): keys of one holder "
                                    "share that holder's datasets. Default: a namespace of the key's own, key-ID."),
    json_out: bool = typer.Option(False, "--json", help="Print {id, name, role, holder, key} as JSON."),
) -> None:
    """Create an API key and print it once: only its hash is stored, it cannot be shown again."""
    from airlock.access.keys import create_key, get_key
    from airlock.config import get_settings

    settings = get_settings()
    rpm = settings.default_rpm if rpm is None else rpm
    tpm = settings.default_tpm if tpm is None else tpm
    meta = open_airlock().meta
    key_id, secret = create_key(meta, name, role=role, models=models, expires=expires,
                                rpm=rpm, tpm=tpm, max_tokens=max_tokens, actor=cli_actor(), holder=holder)
    holder = get_key(meta, key_id)["holder"]
    if json_out:
        print_json({"id": key_id, "name": name, "role": role, "holder": holder, "key": secret})
        return
    typer.echo(secret)
    typer.echo(
        f"Created API key {key_id} ({name}, role {role}, holder {holder}). Store it now: it cannot be shown again. "
        f"Revoke it with `airlock apikey revoke {key_id}`.",
        err=True,
    )


@app.command("list")
@command
def list_(
    json_out: bool = typer.Option(False, "--json", help="Print the keys as a JSON list."),
    active: bool = typer.Option(False, "--active", help="Leave out revoked keys."),
) -> None:
    """List API keys: id, name, role, scope, limits, expiry, last use and status; never the key."""
    from airlock.access.keys import list_keys

    rows = list_keys(open_airlock().meta, include_revoked=not active)
    if json_out:
        print_json(rows)
        return
    if not rows:
        typer.echo("No API keys. Create one with `airlock apikey create --name NAME`.")
        return
    from rich.table import Table

    # The holder under the name, not a column of its own: the table stays readable in 80 columns.
    table = Table("id", "name / holder", "role", "models", "limits", "expires", "last used", "status")
    for r in rows:
        status = f"revoked {r['revoked_at']}" if r["revoked_at"] else "active"
        limits = ", ".join(f"{r[k]} {k}" for k in ("rpm", "tpm", "max_tokens") if r[k]) or "none"
        table.add_row(r["id"], f"{r['name']}\n{r['holder']}", r["role"], ",".join(r["models"]) if r["models"] else "all",
                      limits, r["expires_at"] or "never", r["last_used_at"] or "never", status)
    console.print(table)


@app.command("revoke")
@command
def revoke(key_id: str = typer.Argument(..., help="The key's id, as `airlock apikey list` shows it.")) -> None:
    """Revoke an API key: the gateway refuses it from the next request on."""
    from airlock.access.keys import revoke_key

    row = revoke_key(open_airlock().meta, key_id, actor=cli_actor())
    typer.echo(f"API key {row['id']} ({row['name']}) revoked at {row['revoked_at']}.")

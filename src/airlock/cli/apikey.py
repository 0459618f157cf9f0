"""`airlock apikey ...` commands: thin adapters over the service functions."""

from __future__ import annotations

import typer

from airlock.cli.common import command, console, open_airlock, print_json

app = typer.Typer(
    no_args_is_help=True,
    help="API keys that internal applications send to the gateway as 'Authorization: Bearer <key>'.",
)


@app.command("create")
@command
def create(
    name: str = typer.Option(..., "--name", "-n", help="What the key is for: an application or a person."),
    json_out: bool = typer.Option(False, "--json", help="Print {id, name, key} as JSON."),
) -> None:
    """Create an API key and print it once: only its hash is stored, it cannot be shown again."""
    from airlock.gateway.apikeys import create_key

    key_id, secret = create_key(open_airlock().meta, name)
    if json_out:
        print_json({"id": key_id, "name": name, "key": secret})
        return
    typer.echo(secret)
    typer.echo(
        f"Created API key {key_id} ({name}). Store it now: it cannot be shown again. "
        f"Revoke it with `airlock apikey revoke {key_id}`.",
        err=True,
    )


@app.command("list")
@command
def list_(
    json_out: bool = typer.Option(False, "--json", help="Print the keys as a JSON list."),
    active: bool = typer.Option(False, "--active", help="Leave out revoked keys."),
) -> None:
    """List API keys: id, name, the first characters of the key, created and revoked dates."""
    from airlock.gateway.apikeys import list_keys

    rows = list_keys(open_airlock().meta, include_revoked=not active)
    if json_out:
        print_json(rows)
        return
    if not rows:
        typer.echo("No API keys. Create one with `airlock apikey create --name NAME`.")
        return
    from rich.table import Table

    table = Table("id", "name", "prefix", "created", "status")
    for r in rows:
        status = f"revoked {r['revoked_at']}" if r["revoked_at"] else "active"
        table.add_row(r["id"], r["name"], r["prefix"] + "...", r["created_at"], status)
    console.print(table)


@app.command("revoke")
@command
def revoke(key_id: str = typer.Argument(..., help="The key's id, as `airlock apikey list` shows it.")) -> None:
    """Revoke an API key: the gateway refuses it from the next request on."""
    from airlock.gateway.apikeys import revoke_key

    row = revoke_key(open_airlock().meta, key_id)
    typer.echo(f"API key {row['id']} ({row['name']}) revoked at {row['revoked_at']}.")

"""`airlock backup DIR` and `airlock restore DIR`: thin adapters over backup/service.py."""

from __future__ import annotations

from pathlib import Path

import typer

from airlock.cli.common import cli_actor, command
from airlock.cli.trust import pinned_dir


@command
def backup(out: Path = typer.Argument(..., help="A new or empty folder for the backup (it will hold private keys).")) -> None:
    """Back up this appliance while it runs: the database (SQLite online backup), keys, the pinned
    trust root and the artifact store (the local folder, or the S3 store's references)."""
    from airlock.backup.service import create_backup
    from airlock.config import get_settings

    manifest = create_backup(get_settings(), out, trust_dir=pinned_dir(), actor=cli_actor())
    size = sum(entry["size"] for entry in manifest["files"].values())
    typer.echo(f"backed up {len(manifest['files'])} files ({size} bytes) into {out}; store: "
               f"{manifest['store']['backend']}; audit head {manifest['audit_head']}")
    typer.echo("The backup holds the appliance's private keys: keep it as you keep them.")


@command
def restore(
    source: Path = typer.Argument(..., help="A folder written by `airlock backup`."),
    replace: bool = typer.Option(False, "--replace", help="Move an existing AIRLOCK_HOME aside "
                                 "(HOME.before-restore-TIME) instead of refusing; nothing is deleted."),
) -> None:
    """Verify a backup in full (every file's digest, the database, the audit chain, the S3 store's
    blobs), then make it AIRLOCK_HOME; a backup with any change is refused, naming what changed."""
    from airlock.backup.service import restore_backup
    from airlock.config import get_settings

    done = restore_backup(get_settings(), source, trust_dir=pinned_dir(), actor=cli_actor(), replace=replace)
    typer.echo(f"restored {done['files']} files from {source} (taken {done['created']}) into {done['home']}"
               + (f"; the previous home is kept at {done['moved_aside']}" if done["moved_aside"] else ""))


def register(app: typer.Typer) -> None:
    for fn in (backup, restore):
        app.command(fn.__name__)(fn)

"""`airlock backup FILE` and `airlock restore FILE`: thin adapters over backup/service.py."""

from __future__ import annotations

from pathlib import Path

import typer

from airlock.cli.common import cli_actor, command
from airlock.cli.trust import passphrase_source, pinned_dir

PASSPHRASE_ENV = "AIRLOCK_BACKUP_PASSPHRASE"
PASSPHRASE_FILE = typer.Option(None, "--passphrase-file", show_default=False,
                               help="Read the backup's passphrase from this file (mode 0600; default: "
                                    f"{PASSPHRASE_ENV}, else a prompt). Never given on the command line.")


def _passphrase(source: Path, passphrase_file: Path | None, *, new: bool) -> bytes:
    return passphrase_source(passphrase_file, new=new, env=PASSPHRASE_ENV)(source)


@command
def backup(
    out: Path = typer.Argument(..., help="A new file for the sealed backup (never an existing one)."),
    passphrase_file: Path = PASSPHRASE_FILE,
    recipient: Path | None = typer.Option(None, "--recipient", help="Also seal to this X25519 public key (PEM): "
                                          "restoring then needs its private key as well as the passphrase."),
) -> None:
    """Back up this appliance while it runs into one sealed file: the database (SQLite online
    backup), the audit anchors, keys, the pinned trust root and the artifact store (the local
    folder, or the S3 store's references), encrypted and authenticated with a key derived from the
    passphrase (scrypt, ChaCha20-Poly1305)."""
    from airlock.backup.seal import load_recipient
    from airlock.backup.service import create_backup
    from airlock.config import get_settings

    to = load_recipient(recipient) if recipient else None
    manifest = create_backup(get_settings(), out, passphrase=_passphrase(out, passphrase_file, new=True),
                             trust_dir=pinned_dir(), actor=cli_actor(), recipient=to)
    size = sum(entry["size"] for entry in manifest["files"].values())
    typer.echo(f"sealed {len(manifest['files'])} files ({size} bytes) into {out}; store: "
               f"{manifest['store']['backend']}; audit head {manifest['audit_head']}")
    typer.echo("Without the passphrase the backup cannot be read or restored: keep it apart from the backup.")


@command
def restore(
    source: Path = typer.Argument(..., help="A file written by `airlock backup`."),
    passphrase_file: Path = PASSPHRASE_FILE,
    replace: bool = typer.Option(False, "--replace", help="Move an existing AIRLOCK_HOME aside "
                                 "(HOME.before-restore-TIME) instead of refusing; nothing is deleted."),
    identity: Path | None = typer.Option(None, "--identity", help="The X25519 private key (PEM, mode 0600) of "
                                         "the recipient a backup was sealed to with --recipient."),
) -> None:
    """Authenticate every byte of a sealed backup and verify it in full (every file's digest, the
    database, the audit chain and its anchors, the S3 store's blobs), then make it AIRLOCK_HOME; a
    wrong passphrase or a backup with any change is refused, and nothing is written."""
    from airlock.backup.seal import load_identity
    from airlock.backup.service import restore_backup
    from airlock.config import get_settings
    from airlock.trust.keyfiles import check_private_file

    if identity is not None:
        check_private_file(identity, what="identity file")
    done = restore_backup(get_settings(), source, passphrase=_passphrase(source, passphrase_file, new=False),
                          trust_dir=pinned_dir(), actor=cli_actor(), replace=replace,
                          identity=load_identity(identity) if identity else None)
    typer.echo(f"restored {done['files']} files from {source} (taken {done['created']}) into {done['home']}"
               + (f"; the previous home is kept at {done['moved_aside']}" if done["moved_aside"] else ""))


def register(app: typer.Typer) -> None:
    for fn in (backup, restore):
        app.command(fn.__name__)(fn)

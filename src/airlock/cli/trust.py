"""`airlock trust ...`: the trust root's key ceremonies, and the root this appliance pins."""

from __future__ import annotations

import getpass
import os
from datetime import UTC, datetime, timedelta
from pathlib import Path

import typer

from airlock.cli.common import command
from airlock.errors import InvalidInput

PASSPHRASE_ENV = "AIRLOCK_KEY_PASSPHRASE"

app = typer.Typer(no_args_is_help=True,
                  help="The trust root: which keys sign bundles (role bundle), promotions (role model) and "
                       "the root itself (role root), how many of them must, and until when.")

ROOT = typer.Option(..., "--root", help="The trust root file (root.json) of the ceremony.")
SIGN_WITH = typer.Option(..., "--sign-with", help="A key file of the root role; repeat up to its threshold.")
PASSPHRASE_FILE = typer.Option(None, "--passphrase-file", show_default=False,
                               help="Read key passphrases from this file (mode 0600; default: "
                                    f"{PASSPHRASE_ENV}, else a prompt per key file).")


def passphrase_source(passphrase_file: Path | None, *, new: bool = False, env: str = PASSPHRASE_ENV):
    """Where key passphrases come from: the file, else the variable `env`, else a prompt per key file."""
    from airlock.trust.keyfiles import check_private_file

    def from_file(_key: Path) -> bytes:
        check_private_file(passphrase_file, what="passphrase file")
        return passphrase_file.read_bytes().removesuffix(b"\n").removesuffix(b"\r")

    def from_env(_key: Path) -> bytes:
        return os.environ[env].encode()

    def prompt(key: Path) -> bytes:
        if not new:
            return getpass.getpass(f"Passphrase for {key}: ").encode()
        first = getpass.getpass(f"New passphrase for {key}: ")
        if getpass.getpass("The same passphrase again: ") != first:
            raise InvalidInput(f"{key}: the two passphrases differ; nothing was written for this key")
        return first.encode()

    if passphrase_file is not None:
        return from_file
    return from_env if os.environ.get(env) else prompt


def pinned_dir() -> Path:
    """The installed release's PREFIX/trust (where the offline installer pins), else AIRLOCK_HOME/trust."""
    from airlock.cli.common import default_prefix
    from airlock.config import get_settings
    from airlock.trust.pinned import trust_dir

    from airlock.private import make_private_dir

    prefix = os.environ.get("AIRLOCK_PREFIX") or default_prefix()
    if prefix:
        return Path(prefix) / "trust"  # read by the services' user: made by the installer, 0755
    pinned = trust_dir(get_settings())
    # In the home: private like all of it. Made only inside a home that exists: a restore, which
    # takes this path too, assembles a home of its own and refuses one that is already there.
    if pinned.parent.is_dir():
        make_private_dir(pinned)
    return pinned


def _signing_keys(paths: list[Path], passphrase_file: Path | None) -> list:
    from airlock.trust.keyfiles import load_signing_key

    ask = passphrase_source(passphrase_file)
    return [load_signing_key(path, ask) for path in paths]


def _report(root_path: Path, new) -> None:
    from airlock.trust.ceremony import show as show_root

    typer.echo(f"{root_path} is now version {new.version}; version {new.version - 1} is kept beside it as "
               f"{new.version - 1}.root.json. Carry both to the appliances, which accept it only as a rotation.")
    typer.echo(show_root(new), nl=False)


@app.command("init")
@command
def init(
    directory: Path = typer.Option(Path("."), "--dir", help="Where root.json and keys/ are written (on an "
                                   "offline machine); nothing there is ever overwritten."),
    root_keys: int = typer.Option(None, "--root-keys", show_default=False,
                                  help="How many root keys to create (default 3; 1 with --demo)."),
    threshold: int = typer.Option(None, "--threshold", show_default=False,
                                  help="How many root keys must sign a new root (default 2; 1 with --demo)."),
    expires_days: int = typer.Option(365, "--expires-days", help="Days until the root expires and must be renewed."),
    demo: bool = typer.Option(False, "--demo", help="Allow a threshold of 1 (one key replaces the root): for "
                              "demonstrations, not for production."),
    passphrase_file: Path = PASSPHRASE_FILE,
) -> None:
    """Create a new trust root (version 1) and passphrase-protected key files for every role."""
    from airlock.trust.ceremony import init_root, show as show_root

    result = init_root(directory, root_keys=root_keys or (1 if demo else 3), threshold=threshold or (1 if demo else 2),
                       expires_days=expires_days, demo=demo, passphrase=passphrase_source(passphrase_file, new=True))
    typer.echo(f"created {result.root_path}")
    for role, files in result.key_files.items():
        typer.echo(f"  {role}: " + ", ".join(str(f) for f in files))
    typer.echo(show_root(result.root), nl=False)
    typer.echo("Give each root key file to its own holder, on its own media, and send the root key fingerprints "
               "to the operators by another channel (paper, phone).")
    if result.warning:
        typer.secho(result.warning, err=True, fg="red", bold=True)


@app.command("new-key")
@command
def new_key(
    out: Path = typer.Option(..., "--out", help="The new key file, NAME.key; its public key goes to NAME.pub."),
    passphrase_file: Path = PASSPHRASE_FILE,
) -> None:
    """Create one passphrase-protected key file (for a new key holder) and print its fingerprint."""
    from airlock.trust.ed25519 import fingerprint_text
    from airlock.trust.keyfiles import create_key_file, public_path, public_raw

    key = create_key_file(out, passphrase_source(passphrase_file, new=True))
    typer.echo(f"created {out} and {public_path(out)}; fingerprint {fingerprint_text(public_raw(key))}")


@app.command("add-key")
@command
def add_key(
    root: Path = ROOT,
    role: str = typer.Option(..., "--role", help="root, bundle or model."),
    key: Path = typer.Option(..., "--key", help="The public key file (NAME.pub) of the key to add."),
    sign_with: list[Path] = SIGN_WITH,
    passphrase_file: Path = PASSPHRASE_FILE,
) -> None:
    """Write the next root version with one more key in a role."""
    from airlock.trust import ceremony
    from airlock.trust.ed25519 import public_pem
    from airlock.trust.keyfiles import load_public_file

    pem = public_pem(load_public_file(key))
    _report(root, ceremony.add_key(root, role, pem, _signing_keys(sign_with, passphrase_file)))


@app.command("revoke-key")
@command
def revoke_key(
    root: Path = ROOT,
    role: str = typer.Option(..., "--role", help="root, bundle or model."),
    keyid: str = typer.Option(..., "--keyid", help="The key's id (its fingerprint, spaces allowed)."),
    sign_with: list[Path] = SIGN_WITH,
    passphrase_file: Path = PASSPHRASE_FILE,
) -> None:
    """Write the next root version without a key in a role (refused below the role's threshold)."""
    from airlock.trust import ceremony

    _report(root, ceremony.revoke_key(root, role, keyid, _signing_keys(sign_with, passphrase_file)))


@app.command("rotate")
@command
def rotate(
    root: Path = ROOT,
    threshold: int = typer.Option(..., "--threshold", help="How many keys of the new root role must sign."),
    sign_with: list[Path] = SIGN_WITH,
    keep: list[str] = typer.Option([], "--keep", help="A root key id to keep in the new root role; repeatable."),
    new_key: list[Path] = typer.Option([], "--new-key", help="A public key file (NAME.pub) to add to the new "
                                       "root role; its key file must sign too (--sign-with). Repeatable."),
    generate: int = typer.Option(0, "--generate", help="Create this many new root key files in --keys-dir."),
    keys_dir: Path = typer.Option(None, "--keys-dir", show_default=False,
                                  help="Where --generate writes key files (default: keys/ beside --root)."),
    demo: bool = typer.Option(False, "--demo", help="Allow a threshold of 1: not for production."),
    passphrase_file: Path = PASSPHRASE_FILE,
) -> None:
    """Replace the root role's keys: root N+1 signed by the threshold of N and of N+1."""
    from airlock.trust import ceremony
    from airlock.trust.keyfiles import load_public_file, new_key_files, public_raw
    from airlock.trust.pinned import normalize_fingerprint

    current, _ = ceremony.load_root_file(root)
    kept = [normalize_fingerprint(k) for k in keep]
    missing = [k for k in kept if k not in current.roles["root"].keyids]
    if missing:
        raise InvalidInput(f"--keep {', '.join(missing)}: not a root key of {root}")
    folder = keys_dir or root.parent / ceremony.KEYS_DIR
    paths = [folder / f"root-v{current.version + 1}-{i}.key" for i in range(1, generate + 1)]
    signers = _signing_keys(sign_with, passphrase_file)
    with new_key_files(paths, passphrase_source(passphrase_file, new=True)) as generated:
        publics = ([current.keys[k] for k in kept] + [load_public_file(p) for p in new_key]
                   + [public_raw(k) for k in generated])
        new = ceremony.rotate(root, publics, threshold, signers, [*generated, *signers], demo=demo)
    for path in paths:
        typer.echo(f"created {path}")
    _report(root, new)


@app.command("set-expiry")
@command
def set_expiry(
    root: Path = ROOT,
    days: int = typer.Option(..., "--days", help="The new root expires this many days from now."),
    sign_with: list[Path] = SIGN_WITH,
    passphrase_file: Path = PASSPHRASE_FILE,
) -> None:
    """Renew the root: the next version with a new expiry (also the way out of an expired root)."""
    from airlock.trust import ceremony

    if not 1 <= days <= 3650:
        raise InvalidInput(f"--days {days}: expected 1 to 3650")
    expires = datetime.now(UTC).replace(microsecond=0) + timedelta(days=days)
    _report(root, ceremony.set_expiry(root, expires, _signing_keys(sign_with, passphrase_file)))


@app.command("show")
@command
def show(
    root: Path = typer.Option(None, "--root", show_default=False,
                              help="A root file (default: the root this appliance pins: PREFIX/trust/root.json "
                                   "of an installed release, else AIRLOCK_HOME/trust/root.json)."),
) -> None:
    """Print a root's version, expiry, and every role's threshold and key fingerprints."""
    from airlock.trust.ceremony import load_root_file, show as show_root
    from airlock.trust.pinned import load_pinned

    loaded = load_root_file(root)[0] if root else load_pinned(pinned_dir())
    typer.echo(show_root(loaded), nl=False)


@app.command("pin")
@command
def pin(
    root: Path = typer.Argument(..., help="The first root.json for this appliance."),
    fingerprint: list[str] = typer.Option(..., "--fingerprint", help="A root key fingerprint you received out of "
                                          "band, never from the same media; repeatable (each must match)."),
) -> None:
    """Pin this appliance's first trust root, if its root key fingerprint matches the one you were given."""
    from airlock.trust.ceremony import load_root_file, show as show_root
    from airlock.trust.pinned import pin_first

    pinned = pin_first(pinned_dir(), load_root_file(root)[1], fingerprint, now=datetime.now(UTC))
    typer.echo(f"pinned root version {pinned.version}")
    typer.echo(show_root(pinned), nl=False)


@app.command("accept")
@command
def accept(
    roots: list[Path] = typer.Argument(..., help="The next root versions, in order (N+1, N+2, ...)."),
) -> None:
    """Move this appliance's pinned root forward, only through rotations of the pinned one."""
    from airlock.trust.ceremony import load_root_file, show as show_root
    from airlock.trust.pinned import accept_new_roots

    newest = accept_new_roots(pinned_dir(), [load_root_file(p)[1] for p in roots],
                              now=datetime.now(UTC))
    typer.echo(f"pinned root version {newest.version}")
    typer.echo(show_root(newest), nl=False)

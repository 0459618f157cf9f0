"""What every command shares: opening the appliance and turning errors into exit codes."""

from __future__ import annotations

import json
import sys
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import typer
from rich.console import Console
from rich.markup import escape

from airlock.errors import AirlockError

# No emoji codes: values such as fingerprints hold ":AB:", which rich would print as an emoji.
console = Console(emoji=False)
err_console = Console(stderr=True, emoji=False)


@contextmanager
def cli_errors() -> Iterator[None]:
    """Print an AirlockError as 'error: ...' and exit with its code; no traceback for users."""
    try:
        yield
    except AirlockError as exc:
        err_console.print(f"[bold red]error:[/] {escape(str(exc))}", highlight=False, soft_wrap=True)
        raise typer.Exit(exc.exit_code) from None


def cli_actor() -> str:
    """How the person running a command appears in the audit log: the account of the real uid.

    Not USER or LOGNAME (what getpass.getuser reads first): anyone can set those to another name.
    """
    import os
    import pwd

    uid = os.getuid()
    try:
        user = pwd.getpwuid(uid).pw_name
    except KeyError:  # no passwd entry, e.g. a bare container uid
        user = str(uid)
    return f"os:{user}"


def open_airlock():
    """The appliance of AIRLOCK_HOME, for a command that reads or writes its home: everything the
    command creates from here on is owner-only (airlock.private)."""
    from airlock.context import Airlock
    from airlock.private import private_umask

    private_umask()
    return Airlock.open()


def print_json(data: Any) -> None:
    sys.stdout.write(json.dumps(data, indent=2, sort_keys=True, default=str) + "\n")


def command(fn: Callable) -> Callable:
    """Wrap a command body so AirlockErrors become clean messages and exit codes."""
    import functools

    @functools.wraps(fn)
    def wrapper(*args, **kwargs):
        with cli_errors():
            return fn(*args, **kwargs)

    return wrapper


def default_prefix() -> Path | None:
    """The install prefix of the release this airlock runs from (PREFIX/releases/NAME/venv), if any."""
    from airlock.config import installed_release

    release = installed_release()
    return release.parents[1] if release is not None else None


def require_host_admin() -> None:
    """Refuse a host-only admin command (an export) to anyone but the appliance's own account, the
    owner of AIRLOCK_HOME: the home's modes keep others out anyway (airlock.private), and this says
    so plainly before anything is written, instead of failing halfway on a permission error."""
    import os

    from airlock.config import get_settings
    from airlock.errors import Forbidden

    home = get_settings().home
    try:
        owner = home.stat().st_uid
    except PermissionError:
        owner = None
    except FileNotFoundError:
        raise Forbidden(f"no appliance at {home} (AIRLOCK_HOME): this command acts on an existing one") from None
    if owner != os.geteuid():
        raise Forbidden(f"this is an admin action on the host: run it as the appliance's account (the owner of "
                        f"{home}, uid {owner if owner is not None else 'unknown'}), not as uid {os.geteuid()}")

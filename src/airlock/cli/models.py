"""`airlock models ...` commands: thin adapters over the service functions."""

from __future__ import annotations

import typer

app = typer.Typer(no_args_is_help=True)

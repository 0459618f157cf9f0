"""`airlock datasets ...` commands: thin adapters over the service functions."""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Annotated, Any

import typer

from airlock.cli.common import cli_actor, command, open_airlock, print_json
from airlock.errors import InvalidInput, NotFound

app = typer.Typer(no_args_is_help=True)

PathArg = Annotated[Path, typer.Argument(help="The JSONL file: chat ('messages') or prompt/completion records.")]
ModelOpt = Annotated[
    str | None,
    typer.Option("--model", help="Count tokens with this model's tokenizer: a name under the models "
                                 "folder or a directory holding a tokenizer."),
]
MaxLengthOpt = Annotated[
    int | None,
    typer.Option("--max-length", min=1, help="Refuse records longer than this many tokens (needs --model)."),
]
NameOpt = Annotated[str | None, typer.Option("--name", help="A name to find it by (default: the file stem).")]
JsonOpt = Annotated[bool, typer.Option("--json", help="Print the result as JSON.")]


@contextmanager
def _problems_listed() -> Iterator[None]:
    """Print every problem of an invalid dataset, one per line, then exit with its code.

    Problems quote the user's own text, so they are printed plainly, never as markup.
    """
    try:
        yield
    except InvalidInput as exc:
        typer.echo(f"error: {exc.message}", err=True)
        for problem in exc.problems:
            typer.echo(f"  {problem}", err=True)
        raise typer.Exit(exc.exit_code) from None


def _tokenizer(model: str | None, max_length: int | None) -> Any:
    if model is None:
        if max_length is not None:
            raise InvalidInput("--max-length needs --model: tokens are counted with the model's tokenizer")
        return None
    from airlock.config import get_settings

    folder = Path(model)
    if not folder.is_dir():
        folder = get_settings().models_dir / model
    if not folder.is_dir():
        raise NotFound(f"no model {model!r}: neither a directory nor a folder under the models directory")
    from transformers import AutoTokenizer

    try:
        return AutoTokenizer.from_pretrained(str(folder), local_files_only=True)
    except (OSError, ValueError) as exc:
        raise InvalidInput(f"cannot load a tokenizer from {folder}: {exc}") from None


@app.command()
@command
def validate(path: PathArg, model: ModelOpt = None, max_length: MaxLengthOpt = None,
             as_json: JsonOpt = False) -> None:
    """Check a dataset file and list every problem (file:line: field: what), changing nothing."""
    from airlock.datasets.validate import validate_dataset

    tokenizer = _tokenizer(model, max_length)
    with _problems_listed():
        result = validate_dataset(path, tokenizer=tokenizer, max_length=max_length)
    summary = {"source": result.source, "format": result.format, "records": result.count,
               "lines": result.lines, "digest": result.digest, "size": result.size}
    if as_json:
        print_json(summary)
        return
    typer.echo(f"{result.source}: valid, {result.count} records in {result.format} format "
               f"({result.lines} lines), {result.digest}")


@app.command()
@command
def add(path: PathArg, name: NameOpt = None, model: ModelOpt = None, max_length: MaxLengthOpt = None,
        as_json: JsonOpt = False) -> None:
    """Validate a dataset file and add it to the appliance; an invalid file adds nothing."""
    from airlock.datasets.service import add_dataset

    tokenizer = _tokenizer(model, max_length)
    airlock = open_airlock()
    with _problems_listed():
        row = add_dataset(airlock, path, name=name, tokenizer=tokenizer, max_length=max_length,
                          actor=cli_actor())
    if as_json:
        print_json(row)
        return
    typer.echo(f"dataset {row['name']!r}: {row['records']} records in {row['format']} format, {row['digest']}")


@app.command("list")
@command
def list_(as_json: JsonOpt = False) -> None:
    """List the datasets on this appliance, newest first."""
    from airlock.datasets.service import list_datasets

    rows = list_datasets(open_airlock())
    if as_json:
        print_json(rows)
        return
    if not rows:
        typer.echo("no datasets yet; add one with: airlock datasets add PATH")
        return
    header = ("DIGEST", "NAME", "FORMAT", "RECORDS", "CREATED")
    table = [header] + [
        (r["digest"][:19], r["name"], r["format"], str(r["records"]), r["created_at"]) for r in rows
    ]
    widths = [max(len(row[i]) for row in table) for i in range(len(header))]
    for row in table:
        typer.echo("  ".join(cell.ljust(w) for cell, w in zip(row, widths, strict=True)).rstrip())

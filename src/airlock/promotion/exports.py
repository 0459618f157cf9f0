"""Exports: an adapter leaves the appliance as PEFT files, or merged into its base model, with a
signed manifest of exactly what was written.

An export is the one way a fine-tuned model goes out of the appliance on purpose, so it is held
to what serving is held to: the adapter is read from the store and verified against its signed
manifest first (a flipped byte is refused, not carried out), a revoked adapter never leaves, and
the base model a merge starts from must be the very one the adapter was trained on (by digest).

What is written is described by an `airlock.export/v1` manifest (every file's sha256 and size, the
adapter's manifest digest, the base model's name and digest, who exported it, when, and where to),
signed with the appliance's key in a DSSE envelope the way promotion records are, and kept beside
the files as `airlock-export.json`. The folder is built under a hidden temporary sibling and
renamed into place only once complete, so an interrupted export never leaves a folder under the
requested name, let alone one with a manifest that looks complete.
"""

from __future__ import annotations

import json
import os
import shutil
import tempfile
from enum import StrEnum
from pathlib import Path
from typing import TypedDict

from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PublicKey

from airlock.context import Airlock
from airlock.errors import GateRefused, IntegrityFailure, InvalidInput, NotFound
from airlock.meta.db import now
from airlock.models.adapters import ModelRow, get_model
from airlock.models.catalog import digest_cache, model_digest, resolve_base_model
from airlock.promotion.signing import verify_model
from airlock.store.base import sha256_bytes, sha256_file
from airlock.store.local import fsync_path
from airlock.trust.keys import ensure_appliance_key
from airlock.trust.manifest import directory_reader, open_envelope, sign_payload, verify_files
from airlock.trust.root import canonical_json

EXPORT_TYPE = "application/vnd.airlock.export+json"
EXPORT_KIND = "airlock.export/v1"
MANIFEST_NAME = "airlock-export.json"


class ExportForm(StrEnum):
    ADAPTER = "adapter"  # the adapter's own PEFT files, as the store holds them
    MERGED = "merged"  # the base model with the adapter merged in, plus the base's tokenizer


class ExportManifest(TypedDict):
    """What `airlock-export.json` signs."""

    kind: str  # airlock.export/v1
    model_id: str
    form: str  # an ExportForm
    files: dict[str, dict]  # relative path -> {sha256, size}, every file written but the manifest
    adapter_manifest_digest: str  # the adapter's own signed manifest, as `airlock models verify` checks it
    base_model: dict  # {name, digest}: the base the adapter was trained on (and, merged, merged into)
    exported_by: str
    exported_at: str
    destination: str


def check_destination(out: Path, home: Path) -> Path:
    """The absolute --out once it is safe to create: not a symlink (it could point anywhere), not
    an existing file or a folder with anything in it, in a folder that exists, outside the home."""
    out = Path(out).absolute()
    if out.parent.resolve().is_relative_to(Path(home).resolve()):
        raise InvalidInput(f"--out {out} lies inside the appliance's home {home}: an export is written where it "
                           "leaves the appliance, never among the files airlock keeps and checks")
    if out.is_symlink():
        raise InvalidInput(f"--out {out} is a symbolic link (to {os.readlink(out)}); an export is written "
                           "only to a real folder the operator names, never through a link")
    if out.exists():
        if not out.is_dir():
            raise InvalidInput(f"--out {out} exists and is not a folder")
        if any(out.iterdir()):
            raise InvalidInput(f"--out {out} exists and is not empty; name a new folder, so no export is "
                               "mixed with other files")
    if not out.parent.is_dir():
        raise NotFound(f"--out {out}: its folder {out.parent} does not exist")
    return out


def exportable(airlock: Airlock, model_id: str) -> tuple[ModelRow, dict]:
    """The model's row and its verified adapter manifest; refused when revoked or when any stored
    byte differs from what was signed."""
    model = get_model(airlock, model_id)
    if model["revoked_at"]:
        raise GateRefused(f"model {model_id} was revoked at {model['revoked_at']} by {model['revoked_by']} "
                          f"({model['revoked_reason']}); a revoked adapter is never exported")
    return model, verify_model(airlock, model_id)


def export_model(airlock: Airlock, model_id: str, out: Path, *, form: ExportForm, actor: str) -> ExportManifest:
    """Write `model_id` to `out` as `form`, with its signed manifest; audited with the destination."""
    out = check_destination(out, airlock.settings.home)
    model, adapter_manifest = exportable(airlock, model_id)
    base_dir = _verified_base(airlock, model) if form is ExportForm.MERGED else None
    try:
        partial = Path(tempfile.mkdtemp(dir=out.parent, prefix=f".{out.name}.partial-"))
    except OSError as exc:
        raise InvalidInput(f"--out {out}: cannot write in {out.parent}: {exc.strerror}") from None
    try:
        _write_adapter(airlock, adapter_manifest["files"], partial / ".adapter")
        if base_dir is not None:
            from airlock.promotion.merged import write_merged  # torch and PEFT, only when merging

            write_merged(base_dir, partial / ".adapter", partial)
            shutil.rmtree(partial / ".adapter")
        else:
            for entry in (partial / ".adapter").iterdir():
                entry.rename(partial / entry.name)
            (partial / ".adapter").rmdir()
        manifest = ExportManifest(
            kind=EXPORT_KIND, model_id=model_id, form=form.value, files=_index(partial),
            adapter_manifest_digest=model["manifest_digest"],
            base_model={"name": model["base_model"], "digest": model["base_digest"]},
            exported_by=actor, exported_at=now(), destination=str(out))
        envelope = json.dumps(sign_payload(EXPORT_TYPE, canonical_json(manifest),
                                           ensure_appliance_key(airlock.settings)), indent=2).encode()
        (partial / MANIFEST_NAME).write_bytes(envelope)
        _sync_tree(partial)
        # rename(2) replaces an empty folder and fails on one that gained files meanwhile.
        os.rename(partial, out)
        fsync_path(out.parent)
    except BaseException:
        shutil.rmtree(partial, ignore_errors=True)
        raise
    airlock.meta.audit(actor, "model.exported", model_id, destination=str(out), form=form.value,
                       export=sha256_bytes(envelope), files=len(manifest["files"]))
    return manifest


def verify_export(folder: Path, public_key: Ed25519PublicKey) -> ExportManifest:
    """The export's manifest once its signature by `public_key` checks and every file in `folder`
    is the one it names (none missing, changed or added); IntegrityFailure naming each otherwise."""
    folder = Path(folder)
    envelope_path = folder / MANIFEST_NAME
    if not folder.is_dir():
        raise NotFound(f"{folder} is not a folder")
    if not envelope_path.is_file() or envelope_path.is_symlink():
        raise IntegrityFailure(f"{folder} has no {MANIFEST_NAME}: it is not an airlock export, or its "
                               "manifest was removed")
    try:
        envelope = json.loads(envelope_path.read_bytes())
    except (UnicodeDecodeError, ValueError) as exc:
        raise IntegrityFailure(f"{envelope_path} is not JSON: {exc}") from None
    try:
        manifest = json.loads(open_envelope(envelope, EXPORT_TYPE, public_key))
    except IntegrityFailure as exc:
        raise IntegrityFailure(f"{envelope_path}: {exc.message}") from None
    if not isinstance(manifest, dict) or manifest.get("kind") != EXPORT_KIND:
        raise IntegrityFailure(f"{envelope_path} does not hold an {EXPORT_KIND} manifest")
    present = [p.relative_to(folder).as_posix() for p in folder.rglob("*")
               if (p.is_file() or p.is_symlink()) and p != envelope_path]
    verify_files(manifest, directory_reader(folder), present=present)
    return ExportManifest(**manifest)


def _verified_base(airlock: Airlock, model: ModelRow) -> Path:
    """The base model folder a merge starts from, only if its files are the ones trained on."""
    folder = resolve_base_model(airlock.settings, model["base_model"])
    found = model_digest(folder, cache=digest_cache(airlock.settings))
    if found != model["base_digest"]:
        raise IntegrityFailure(f"base model {model['base_model']!r} at {folder} has digest {found}, but "
                               f"{model['id']} was trained on {model['base_digest']}: a merge onto other "
                               "weights would be a different model")
    return folder


def _write_adapter(airlock: Airlock, files: dict[str, dict], dest: Path) -> None:
    """Every signed file from the store; `get_file` hashes each again while it writes it."""
    for rel, entry in sorted(files.items()):
        airlock.store.get_file(entry["sha256"], dest / rel)


def _index(folder: Path) -> dict[str, dict]:
    return {p.relative_to(folder).as_posix(): {"sha256": sha256_file(p), "size": p.stat().st_size}
            for p in sorted(folder.rglob("*")) if p.is_file()}


def _sync_tree(folder: Path) -> None:
    """Everything on disk before the rename, so a crash cannot leave a named export with holes."""
    for path in [*folder.rglob("*"), folder]:
        fsync_path(path)

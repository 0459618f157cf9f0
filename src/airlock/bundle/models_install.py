"""`airlock models install BUNDLE`: a models bundle's models added to the folder every release shares.

    PREFIX/models/NAME     one folder per installed model; an upgrade or a rollback leaves it alone
    PREFIX/models.json     the highest models-bundle sequence installed, and each model's digest

The bundle is verified by the release verifier, in the release's order, against the pinned root
(`verify_bundle` with the models kind, so a release bundle given here is refused by name); its
sequence is compared with the models bundles installed before, never with the releases'. Then,
still before a byte is unpacked: every file it carries lies in a model folder (models/NAME/...),
no weight is in a pickle-based format, each model has its config.json and safetensors weights,
and no name it brings is installed already with other bytes, in the shared folder or in the
current release (whose own models are looked up first, see Settings.models_dirs). Only then is it
unpacked, by the safe extractor, into a private folder inside PREFIX/models, and each model
renamed into place: a model appears whole or not at all.
"""

from __future__ import annotations

import json
import os
import shutil
import tempfile
from dataclasses import asdict, dataclass
from datetime import datetime
from pathlib import Path

from airlock.bundle.check import read_json, unpack, verify_bundle
from airlock.bundle.install import exclusive, pinned_root
from airlock.bundle.manifest import MODELS_KIND
from airlock.bundle.payload import PICKLE_SUFFIXES
from airlock.config import RELEASE_MODELS, SHARED_MODELS
from airlock.errors import Conflict, IntegrityFailure, InvalidInput
from airlock.models.catalog import check_model_name, listing_digest, model_digest
from airlock.trust.atomic import write_atomic

STATE = "models.json"
SBOM = "sbom.cdx.json"


@dataclass(frozen=True)
class CarriedModel:
    """One model of a verified models bundle, known from its signed file list alone."""

    name: str
    digest: str
    files: int
    size: int


def read_models_state(prefix: Path) -> dict:
    path = prefix / STATE
    return read_json(path, "the installed models' state") if path.exists() else {}


def carried_models(files: dict[str, dict], *, source: str) -> list[CarriedModel]:
    """The models a signed file list holds; every file that is not a model's safe file is named."""
    problems: list[str] = []
    listed: dict[str, dict[str, dict]] = {}
    for path, entry in sorted(files.items()):
        if path == SBOM:
            continue
        parts = path.split("/")
        if len(parts) < 3 or parts[0] != "models":
            problems.append(f"{path!r}: not inside a model folder (models/NAME/...); a models bundle carries "
                            "models only")
            continue
        try:
            check_model_name(parts[1])
        except InvalidInput as exc:
            problems.append(f"{path!r}: {exc.message}")
            continue
        if Path(path).suffix.lower() in PICKLE_SUFFIXES:
            problems.append(f"{path!r}: a pickle-based weight format, which can run code when loaded; "
                            "airlock loads safetensors only")
        listed.setdefault(parts[1], {})["/".join(parts[2:])] = entry
    for name, entries in sorted(listed.items()):
        if "config.json" not in entries:
            problems.append(f"model {name!r}: no config.json")
        if not any(rel.endswith(".safetensors") and "/" not in rel for rel in entries):
            problems.append(f"model {name!r}: no .safetensors weights")
    if not listed and not problems:
        problems.append("no model at all")
    if problems:
        raise IntegrityFailure(f"{source}: the signed models bundle holds what a models folder may not",
                               problems=problems)
    return [CarriedModel(name, listing_digest(entries), len(entries), sum(e["size"] for e in entries.values()))
            for name, entries in sorted(listed.items())]


def _placement(prefix: Path, models: list[CarriedModel]) -> tuple[list[CarriedModel], list[CarriedModel]]:
    """(models to add, models installed already with the same bytes); a name taken by other bytes is
    refused, since replacing it would change what adapters trained on it were trained on."""
    new, same, problems = [], [], []
    for model in models:
        shared = prefix / SHARED_MODELS / model.name
        release = prefix / "current" / RELEASE_MODELS / model.name
        if release.is_dir() and model_digest(release) != model.digest:
            problems.append(f"{model.name!r}: the current release carries a different model of this name "
                            f"({release}), which is looked up first; rename the model before bundling it")
        elif shared.is_dir() or shared.is_symlink():
            if shared.is_symlink() or model_digest(shared) != model.digest:
                problems.append(f"{model.name!r}: {shared} holds a different model of this name; remove it "
                                "first, or bundle the new model under another name")
            else:
                same.append(model)
        else:
            new.append(model)
    if problems:
        raise Conflict("models already installed under these names differ from the bundle's; nothing was "
                       "installed", problems=problems)
    return new, same


def _move_into_place(unpacked: Path, shared: Path, models: list[CarriedModel]) -> None:
    """Rename each unpacked model into the shared folder; on any failure, the ones moved go back."""
    moved: list[str] = []
    try:
        for model in models:
            target = shared / model.name
            if os.path.lexists(target):  # raced in since the check: never replaced
                raise Conflict(f"{target}: appeared while the bundle was unpacked; nothing was installed")
            os.rename(unpacked / model.name, target)
            moved.append(model.name)
    except BaseException:
        for name in moved:
            os.rename(shared / name, unpacked / name)
        raise


def install_models(bundle_dir: Path, prefix: Path, *, now: datetime, verify_only: bool = False) -> dict:
    """Verify a models bundle against PREFIX's pinned root and add its models to PREFIX/models."""
    with exclusive(prefix):
        pinned = pinned_root(prefix)
        if pinned is None:
            raise InvalidInput(f"{prefix}: no release is installed here (no pinned trust root in "
                               f"{prefix / 'trust'}); install a release first, then its models")
        state = read_models_state(prefix)
        shared = prefix / SHARED_MODELS
        verified = verify_bundle(bundle_dir, now=now, pinned=pinned, kind=MODELS_KIND,
                                 installed_sequence=state.get("highest_sequence"), space_at=prefix)
        sequence = verified.manifest["sequence"]
        new, same = _placement(prefix, carried_models(verified.manifest["files"], source=str(bundle_dir)))
        said = {"sequence": sequence, "models_dir": str(shared), "installed": [asdict(m) for m in new],
                "unchanged": [m.name for m in same]}
        if verify_only or not new:
            return said
        shared.mkdir(mode=0o755, exist_ok=True)
        staging = Path(tempfile.mkdtemp(prefix=".incoming-", dir=shared))  # hidden: never listed as a model
        try:
            unpack(bundle_dir, verified, staging / "bundle")
            _move_into_place(staging / "bundle" / "models", shared, new)
        finally:
            shutil.rmtree(staging, ignore_errors=True)
        installed = {**state.get("models", {}),
                     **{m.name: {"digest": m.digest, "sequence": sequence, "installed_at": now.isoformat()}
                        for m in new}}
        new_state = {"highest_sequence": max(sequence, state.get("highest_sequence") or 0), "models": installed}
        write_atomic(prefix / STATE, json.dumps(new_state, indent=2, sort_keys=True).encode(), 0o644)
        return said

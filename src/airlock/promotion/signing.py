"""Signing a candidate's manifest and verifying a stored model against it.

`verify_model` is the one check used everywhere a model is trusted: `airlock models verify`,
the promotion gate, and the serving stage right before vLLM loads the adapter.
"""

from __future__ import annotations

import json

from airlock.context import Airlock
from airlock.errors import IntegrityFailure
from airlock.meta.db import now
from airlock.models.adapters import check_tree, get_model
from airlock.trust.keys import appliance_public_key, ensure_appliance_key
from airlock.trust.manifest import build_manifest, sign_manifest, verify_envelope


def sign_candidate(airlock: Airlock, model_id: str, eval_results: dict) -> str:
    """Write and sign the manifest of an evaluated adapter; returns the envelope's digest."""
    model = get_model(airlock, model_id)
    manifest = build_manifest(
        model_id=model_id,
        files=airlock.store.tree_index(model["tree_digest"]),
        base_model={"name": model["base_model"], "digest": model["base_digest"]},
        dataset_digest=model["dataset_digest"],
        training_config=json.loads(model["config_json"] or "{}"),
        eval_results=eval_results,
        extra={"tree_digest": model["tree_digest"], "run_id": model["run_id"]},
    )
    envelope = sign_manifest(manifest, ensure_appliance_key(airlock.settings))
    digest = airlock.store.put_bytes(json.dumps(envelope, sort_keys=True).encode())
    with airlock.meta.write() as db:
        db["models"].update(model_id, {"manifest_digest": digest, "eval_json": json.dumps(eval_results)})
    airlock.meta.audit("worker", "model.signed", model_id, manifest=digest)
    return digest


def verify_model(airlock: Airlock, model_id: str) -> dict:
    """Signature, manifest contents and every stored byte; returns the verified manifest. The
    outcome is recorded on the model (checked_at, check_error) for the pages that list models."""
    model = get_model(airlock, model_id)
    if not model["manifest_digest"]:
        raise IntegrityFailure(f"model {model_id} has no signed manifest yet (it has not passed evaluation)")
    try:
        manifest = _verified_manifest(airlock, model_id, model)
    except (IntegrityFailure, ValueError) as exc:
        _record_check(airlock, model_id, str(exc))
        raise
    _record_check(airlock, model_id, None)
    return manifest


def _record_check(airlock: Airlock, model_id: str, error: str | None) -> None:
    with airlock.meta.write() as db:
        db["models"].update(model_id, {"checked_at": now(), "check_error": error})


def _verified_manifest(airlock: Airlock, model_id: str, model: dict) -> dict:
    envelope = json.loads(airlock.store.get_bytes(model["manifest_digest"]))
    manifest = verify_envelope(envelope, appliance_public_key(airlock.settings))
    problems = []
    if manifest.get("model_id") != model_id:
        problems.append(f"the manifest is for {manifest.get('model_id')!r}, not {model_id!r}")
    if manifest.get("base_model", {}).get("digest") != model["base_digest"]:
        problems.append("the manifest's base model digest differs from the recorded one")
    if problems:
        raise IntegrityFailure(f"model {model_id}: manifest does not match the record", problems=problems)
    try:
        check_tree(airlock, manifest["files"])
    except IntegrityFailure as exc:
        raise IntegrityFailure(f"model {model_id}: {exc.message}", problems=exc.problems) from None
    return manifest

"""Promotion records: what made a candidate the champion of an alias, signed, and checked at every load.

When a request's approvals are complete (or its policy asks none), the appliance writes a record:
the alias, the candidate's manifest digest, the base model's name and digest, the policy (version,
digest, rules), the evaluation (digest and totals), the approvals with their holders, times and
signatures, the author and the time. It is signed with the appliance key and stored in the
content-addressed store; the database row holds its digest and a copy.

`verify_record` is what serving asks before it loads an adapter under a production alias: the
envelope's signature, the row against the record (a row edited in the database is caught), the
manifest digest against the model's, the base model's digest (never its name) against the
served base's, and the approvals against the policy the record names.
"""

from __future__ import annotations

import base64
import binascii
import json

from cryptography.exceptions import InvalidSignature

from airlock.context import Airlock
from airlock.errors import IntegrityFailure
from airlock.meta.db import now
from airlock.models.adapters import get_model
from airlock.promotion.approvals import approval_problems, pinned_root, recorded_approvals
from airlock.promotion.policy import Policy, policy_version
from airlock.promotion.requests import RequestRow
from airlock.states import RequestState
from airlock.trust.keys import appliance_public_key, ensure_appliance_key
from airlock.trust.manifest import sign_payload
from airlock.trust.root import canonical_json, pae

RECORD_TYPE = "application/vnd.airlock.promotion+json"
RECORD_KIND = "airlock.promotion/v1"


def write_record(airlock: Airlock, request: RequestRow, *, actor: str) -> dict:
    """Sign and store the record of a request whose approvals are complete; mark it approved.
    Returns the promotions row."""
    model = get_model(airlock, request["model_id"])
    policy_row = policy_version(airlock, request["alias"], request["policy_version"])
    approvals = recorded_approvals(airlock, request["id"])
    root = pinned_root(airlock) if policy_row and policy_row.policy.signed_approvals else None
    if policy_row is None or policy_row.digest != request["policy_digest"]:
        raise IntegrityFailure(f"request {request['id']}: its policy version is gone or changed")
    if problems := approval_problems(policy_row.policy, request, approvals, root):
        raise IntegrityFailure(f"request {request['id']} is not approved yet", problems=problems)
    record = {
        "kind": RECORD_KIND, "request": request["id"], "alias": request["alias"], "model_id": request["model_id"],
        "manifest_digest": model["manifest_digest"],
        "base_model": {"name": model["base_model"], "digest": model["base_digest"]},
        "run_id": request["run_id"], "author": request["author"],
        "policy": {"version": policy_row.version, "digest": policy_row.digest, "rules": policy_row.policy.model_dump()},
        "evaluation": {"digest": request["evaluation_digest"], "scores": json.loads(request["scores_json"])},
        "champion_before": request["champion_id"], "approvals": approvals, "promoted_at": now(),
    }
    payload = canonical_json(record)
    key = ensure_appliance_key(airlock.settings)
    envelope = sign_payload(RECORD_TYPE, payload, key)
    digest = airlock.store.put_bytes(canonical_json(envelope))
    with airlock.meta.write() as db:
        promotion_id = db["promotions"].insert({
            "model_id": request["model_id"], "manifest_digest": model["manifest_digest"],
            "decision_json": payload.decode("utf-8"), "created_at": record["promoted_at"],
            "alias": request["alias"], "request_id": request["id"], "record_digest": digest}).last_pk
        db["promotion_requests"].update(request["id"], {"state": RequestState.APPROVED, "decided_at": now(),
                                                        "promotion_id": promotion_id})
    airlock.meta.audit(actor, "gate.promoted", request["alias"], request=request["id"], model_id=request["model_id"],
                       record=digest, approvers=[a["holder"] for a in approvals])
    return airlock.meta.one("SELECT * FROM promotions WHERE id = ?", (promotion_id,))


def _signed_record(airlock: Airlock, digest: str) -> dict:
    envelope = json.loads(airlock.store.get_bytes(digest))  # the store checks the bytes hash to `digest`
    if not isinstance(envelope, dict) or envelope.get("payloadType") != RECORD_TYPE:
        raise IntegrityFailure(f"promotion record {digest} is not a promotion record envelope")
    try:
        payload = base64.b64decode(envelope["payload"], validate=True)
        sig = base64.b64decode(envelope["signatures"][0]["sig"], validate=True)
        appliance_public_key(airlock.settings).verify(sig, pae(RECORD_TYPE, payload))
    except (KeyError, IndexError, TypeError, ValueError, binascii.Error, InvalidSignature):
        raise IntegrityFailure(f"promotion record {digest}: the appliance's signature does not verify") from None
    return json.loads(payload)


def verify_record(airlock: Airlock, alias: str, model_id: str, promotion_id: int | None,
                  served_base_digest: str | None) -> dict:
    """The promotion record that lets `alias` serve `model_id`, once every check holds;
    IntegrityFailure naming each that failed otherwise."""
    where = f"alias {alias!r} -> {model_id}"
    row = airlock.meta.one("SELECT * FROM promotions WHERE id = ?", (promotion_id,)) if promotion_id else None
    if row is None or not row["record_digest"]:
        raise IntegrityFailure(f"{where}: no promotion record; only an approved promotion is served under an alias")
    record = _signed_record(airlock, row["record_digest"])
    model = get_model(airlock, model_id)
    problems = []
    if json.loads(row["decision_json"]) != record:
        problems.append("the promotion row in the database differs from the signed record (edited)")
    if (record.get("alias"), record.get("model_id")) != (alias, model_id) or row["model_id"] != model_id:
        problems.append(f"the record promotes {record.get('model_id')} to {record.get('alias')!r}")
    if record.get("manifest_digest") != model["manifest_digest"] or row["manifest_digest"] != model["manifest_digest"]:
        problems.append("the record's manifest digest is not the model's")
    base = record.get("base_model", {}).get("digest")
    if base != model["base_digest"] or (served_base_digest is not None and base != served_base_digest):
        problems.append(f"the record's base model digest {base} is not the served base model's {served_base_digest}")
    if model["revoked_at"]:
        problems.append(f"model {model_id} was revoked at {model['revoked_at']}: {model['revoked_reason']}")
    problems += _policy_problems(airlock, record)
    if problems:
        raise IntegrityFailure(f"{where}: the promotion record does not hold", problems=problems)
    return record


def _policy_problems(airlock: Airlock, record: dict) -> list[str]:
    named = record.get("policy", {})
    policy_row = policy_version(airlock, record.get("alias", ""), named.get("version", -1))
    if policy_row is None or policy_row.digest != named.get("digest"):
        return [f"the record names policy version {named.get('version')}, which is not the appliance's"]
    policy: Policy = policy_row.policy
    root = pinned_root(airlock) if policy.signed_approvals else None
    request = {"id": record.get("request"), "alias": record.get("alias"), "model_id": record.get("model_id"),
               "manifest_digest": record.get("manifest_digest"), "policy_digest": named.get("digest"),
               "evaluation_digest": record.get("evaluation", {}).get("digest"), "author": record.get("author")}
    return approval_problems(policy, request, record.get("approvals", []), root)

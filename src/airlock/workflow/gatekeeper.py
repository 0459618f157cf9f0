"""The promotion gate as one service: propose, decide, promote, revoke, roll back.

The CLI, /api and the web UI call these; they join the promotion package (policy, evaluation,
requests, approvals, records) with serving (staging names, the alias switch), which must not
import each other's orchestration.
"""

from __future__ import annotations

import json
import logging
import tempfile
from pathlib import Path

from airlock.access.keys import holder_of_actor
from airlock.context import Airlock
from airlock.datasets.service import load_records
from airlock.errors import AirlockError, Conflict, GateRefused
from airlock.meta.db import now
from airlock.models.adapters import get_model
from airlock.promotion.approvals import APPROVE, Approver, approval_problems, decide, pinned_root, recorded_approvals
from airlock.promotion.engine_eval import compare_through_engine
from airlock.promotion.evaluate import BASE, CANDIDATE, CHAMPION, compare
from airlock.promotion.policy import require_policy, stricter_of
from airlock.promotion.records import verify_record, write_record
from airlock.promotion.requests import RequestRow, open_request, void_for_model
from airlock.promotion.signing import verify_model
from airlock.promotion.thresholds import problems_of
from airlock.serve.canary import abort_canaries_of
from airlock.serve.deploy import served_base_digest, stage_candidate, switch
from airlock.serve.engine import engine_client, read_secret
from airlock.serve.serving_copy import load_verified
from airlock.states import RequestState
from airlock.trust.root import canonical_json

log = logging.getLogger("airlock.gate")


def champion_of(airlock: Airlock, alias: str) -> str | None:
    row = airlock.meta.one("SELECT model_id FROM aliases WHERE name = ? AND staged_for IS NULL "
                           "AND revoked_note IS NULL", (alias,))
    return row["model_id"] if row else None


def _evaluate(airlock: Airlock, base_path: Path, model: dict, champion_id: str | None, eval_digest: str,
              max_length: int) -> dict:
    """The policy's evaluation: base, champion and candidate on the policy's eval set. The answers
    come from the engine where it runs (the candidate loaded, verified, under its own id: batched,
    bench/eval_bench.py), else from the in-process loop; the figures are the same (tested)."""
    records = load_records(airlock, eval_digest)
    client = engine_client(airlock.settings)
    with tempfile.TemporaryDirectory(prefix="airlock-gate-") as tmp:
        candidate = airlock.store.get_tree(model["tree_digest"], Path(tmp) / CANDIDATE)
        champion = None
        if champion_id:
            champion = airlock.store.get_tree(get_model(airlock, champion_id)["tree_digest"], Path(tmp) / CHAMPION)
        if client.is_healthy():
            for model_id in filter(None, (model["id"], champion_id)):
                if model_id not in client.loaded_adapters():
                    load_verified(airlock, client, model_id)
            settings = airlock.settings
            scores = compare_through_engine(
                settings.vllm_url, {"Authorization": f"Bearer {read_secret(settings)}"}, base_path, candidate,
                records, max_length, base_model=settings.serve_base_model, candidate=model["id"],
                champion_dir=champion, champion=champion_id,
                socket=settings.engine_socket if settings.engine_transport == "uds" else None)
            how = "engine"
        else:
            scores = compare(base_path, candidate, records, max_length, champion_dir=champion)
            how = "in-process"
    return {"scores": {m: s.summary() for m, s in scores.items()}, "answers": {m: s.answers for m, s in scores.items()},
            "answered_by": how}


def propose(airlock: Airlock, *, model_id: str, alias: str, run_id: str | None, base_path: Path,
            workflow_gate: dict | None = None, max_length: int = 512, actor: str = "worker") -> dict:
    """Put a candidate toward `alias`: the policy's evaluation (refused with the numbers), a
    promotion request, the staging name, and the switch at once where the policy asks no approvals."""
    policy_row = require_policy(airlock, alias)
    model = get_model(airlock, model_id)
    if model["revoked_at"]:
        raise GateRefused(f"model {model_id} was revoked ({model['revoked_reason']}); it is never staged again")
    if model["base_digest"] != served_base_digest(airlock):
        raise GateRefused(f"model {model_id} was trained on {model['base_model']!r} ({model['base_digest']}), not on "
                          f"the base model the engine serves; it cannot be proposed for {alias!r}")
    manifest = verify_model(airlock, model_id)
    policy, notes = stricter_of(policy_row.policy, workflow_gate or {})
    champion_id = champion_of(airlock, alias)
    if policy.eval_set_digest:
        evaluation = _evaluate(airlock, base_path, model, champion_id, policy.eval_set_digest, max_length)
        evaluation["eval_set"] = {"name": policy.eval_set, "digest": policy.eval_set_digest}
    else:  # an unprotected policy without an eval set of its own: the run's evaluation counts
        own = manifest.get("eval_results") or {}
        evaluation = {"scores": {BASE: own.get("base"), CANDIDATE: own.get("candidate")}, "answers": {},
                      "eval_set": {"name": "the run's own", "digest": own.get("eval_set")}}
    evaluation_digest = airlock.store.put_bytes(canonical_json(evaluation))
    scores = evaluation["scores"]
    if problems := problems_of(scores, min_exact_match=policy.min_exact_match, better_than_base=policy.better_than_base,
                               better_than_serving=policy.better_than_serving, metric=policy.metric,
                               margin=policy.margin):
        airlock.meta.audit(actor, "gate.refused", alias, model_id=model_id, reasons=problems, evaluation=evaluation_digest)
        if not airlock.meta.one("SELECT 1 AS yes FROM aliases WHERE model_id = ?", (model_id,)):
            _unload(airlock, model_id)  # loaded for the evaluation only: its engine slot goes back
        raise GateRefused(f"the gate of {alias!r} refused {model_id}: " + "; ".join(problems), problems=problems)
    author_actor = (airlock.meta.one("SELECT submitted_by FROM runs WHERE id = ?", (run_id,)) or {}).get(
        "submitted_by") if run_id else actor
    request = open_request(
        airlock, alias=alias, model_id=model_id, manifest_digest=model["manifest_digest"], run_id=run_id,
        author=holder_of_actor(airlock.meta, author_actor or actor),
        author_key=author_actor[4:] if (author_actor or "").startswith("key:") else None,
        policy=policy_row, evaluation_digest=evaluation_digest, scores=scores, champion_id=champion_id, actor=actor)
    staged = stage_candidate(airlock, request, actor=actor)
    result = {"request": request["id"], "alias": alias, "staging_name": staged["staging_name"], "model_id": model_id,
              "scores": scores, "policy_version": policy_row.version, "approvals_needed": policy.approvals,
              "champion": champion_id, "notes": notes, "state": RequestState.PENDING.value}
    if not policy_row.policy.protected:
        result.update(complete(airlock, request, actor=actor), state=RequestState.APPROVED.value)
    return result


def complete(airlock: Airlock, request: RequestRow, *, actor: str) -> dict:
    """Write the signed record of a request whose approvals are complete and switch its alias."""
    promotion = write_record(airlock, request, actor=actor)
    switched = switch(airlock, request["alias"], request["model_id"], promotion["id"], actor=actor)
    with airlock.meta.write() as db:  # the candidate is the champion now: its staging name has done its work
        db.execute("DELETE FROM aliases WHERE name = ? AND staged_for IS NOT NULL", [request["staging_name"]])
    return switched


def decide_and_promote(airlock: Airlock, approver: Approver, request_id: int | str, verdict: str, *,
                       comment: str = "", signature: dict | None = None) -> dict:
    """One person's decision; when it completes the approvals, the record and the switch follow."""
    request = decide(airlock, approver, request_id, verdict, comment=comment, signature=signature)
    out = {"request": request["id"], "state": request["state"], "alias": request["alias"]}
    if verdict != APPROVE:
        return out
    policy = require_policy(airlock, request["alias"]).policy
    root = pinned_root(airlock) if policy.signed_approvals else None
    missing = approval_problems(policy, request, recorded_approvals(airlock, request["id"]), root)
    if missing:
        return {**out, "waiting_for": missing}
    return {**out, **complete(airlock, request, actor=approver.actor), "state": RequestState.APPROVED.value}


def _previous_champion(airlock: Airlock, alias: str, skip: set[str]) -> tuple[str, int] | None:
    """The newest earlier approved champion of `alias` whose record still holds."""
    rows = airlock.meta.query("SELECT model_id, promotion_id FROM alias_history WHERE alias = ? AND promotion_id "
                              "IS NOT NULL ORDER BY id DESC", (alias,))
    base = served_base_digest(airlock)
    for row in rows:
        if row["model_id"] in skip:
            continue
        try:
            verify_record(airlock, alias, row["model_id"], row["promotion_id"], base)
        except AirlockError:
            skip.add(row["model_id"])
            continue
        return row["model_id"], row["promotion_id"]
    return None


def rollback(airlock: Airlock, alias: str, *, actor: str) -> dict:
    """Serve the approved champion before the current one again."""
    current = champion_of(airlock, alias)
    if current is None:
        raise Conflict(f"alias {alias!r} serves no champion now; nothing to roll back")
    previous = _previous_champion(airlock, alias, {current})
    if previous is None:
        raise Conflict(f"alias {alias!r} has no earlier approved champion whose promotion record still holds")
    return switch(airlock, alias, previous[0], previous[1], actor=actor, event="rollback")


def revoke(airlock: Airlock, model_id: str, reason: str, *, actor: str) -> dict:
    """Revoke an adapter for good: pending requests void, staging names gone, and every alias
    serving it back on its previous approved champion or answering 503 naming the revocation."""
    model = get_model(airlock, model_id)
    if model["revoked_at"]:
        raise Conflict(f"model {model_id} was already revoked at {model['revoked_at']}")
    if not reason.strip():
        raise GateRefused("a revocation needs a reason (--reason): the aliases that served the model show it")
    note = f"model {model_id} was revoked by {actor} at {now()}: {reason.strip()}"
    with airlock.meta.write() as db:
        db["models"].update(model_id, {"revoked_at": now(), "revoked_by": actor, "revoked_reason": reason.strip()})
        db.execute("DELETE FROM aliases WHERE model_id = ? AND staged_for IS NOT NULL", [model_id])
    airlock.meta.audit(actor, "model.revoked", model_id, reason=reason.strip())
    void_for_model(airlock, model_id, f"model {model_id} was revoked", actor=actor)
    abort_canaries_of(airlock, model_id, f"its candidate {model_id} was revoked", actor=actor)
    outcome = {}
    for row in airlock.meta.query("SELECT name FROM aliases WHERE model_id = ? AND staged_for IS NULL", (model_id,)):
        previous = _previous_champion(airlock, row["name"], {model_id})
        if previous is not None:
            switch(airlock, row["name"], previous[0], previous[1], actor=actor, event="rollback after revocation")
            outcome[row["name"]] = f"back on {previous[0]}"
            continue
        with airlock.meta.write() as db:
            db["aliases"].update(row["name"], {"revoked_note": note, "updated_at": now()})
        airlock.meta.audit(actor, "alias.stopped", row["name"], reason=note)
        outcome[row["name"]] = "stopped: no earlier approved champion"
    _unload(airlock, model_id)
    return {"model_id": model_id, "revoked": True, "aliases": outcome}


def _unload(airlock: Airlock, model_id: str) -> None:
    """Take an adapter out of the engine, if one runs and holds it (never waits for one to start)."""
    client = engine_client(airlock.settings)
    try:
        if client.is_healthy() and model_id in client.loaded_adapters():
            client.unload_adapter(model_id)
    except AirlockError as exc:  # the engine went away meanwhile: it holds nothing after a restart
        log.info("could not unload %s from the engine: %s", model_id, exc)


def alias_history(airlock: Airlock, alias: str) -> list[dict]:
    """Each champion of an alias, newest first, with its promotion record's approvers."""
    rows = airlock.meta.query("SELECT h.model_id, h.at, h.event, h.promotion_id, p.record_digest, p.decision_json "
                              "FROM alias_history h LEFT JOIN promotions p ON p.id = h.promotion_id "
                              "WHERE h.alias = ? ORDER BY h.id DESC", (alias,))
    out = []
    for r in rows:
        record = json.loads(r["decision_json"]) if r["decision_json"] else {}
        out.append({"model_id": r["model_id"], "at": r["at"], "event": r["event"], "promotion_id": r["promotion_id"],
                    "record": r["record_digest"], "approved_by": [a["holder"] for a in record.get("approvals", [])],
                    "policy_version": record.get("policy", {}).get("version")})
    return out

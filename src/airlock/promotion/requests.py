"""Promotion requests: a candidate bound for an alias, waiting for the approvals its policy asks.

A request is opened when a candidate passes the policy's evaluation; it names the candidate's
manifest digest, the policy's digest and the evaluation's digest, which every approval is bound
to. A newer candidate for the same alias, a policy change or a revocation voids what is pending.
Who sees what: the author sees its own requests with the totals only (the per-example answers
would show the policy's eval set to the one person who must never train on it); approvers and
admins see every request with every answer.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from typing import Any, TypedDict

from airlock.access.holders import holder_of_key
from airlock.access.roles import APPROVES, may
from airlock.context import Airlock
from airlock.errors import InvalidInput, NotFound
from airlock.meta.db import now
from airlock.promotion.policy import PolicyRow
from airlock.states import RequestState

STAGING_SUFFIX = ".candidate-"


class RequestRow(TypedDict):
    id: int
    alias: str
    staging_name: str
    model_id: str
    run_id: str | None
    author: str
    author_key: str | None
    manifest_digest: str
    policy_version: int
    policy_digest: str
    evaluation_digest: str
    scores_json: str
    champion_id: str | None
    state: str
    reason: str | None
    created_at: str
    decided_at: str | None
    promotion_id: int | None


@dataclass(frozen=True)
class Viewer:
    """Who looks at requests: the author's holder sees its own, a reviewer (approver, admin,
    the operator on the host) sees every request with the per-example answers."""

    holder: str
    reviewer: bool = False


def viewer_from_key(key: dict) -> Viewer:
    return Viewer(holder_of_key(key), reviewer=may(key, APPROVES))


def staging_name(alias: str, number: int) -> str:
    return f"{alias}{STAGING_SUFFIX}{number}"


def open_request(airlock: Airlock, *, alias: str, model_id: str, manifest_digest: str, run_id: str | None,
                 author: str, author_key: str | None, policy: PolicyRow, evaluation_digest: str,
                 scores: dict, champion_id: str | None, actor: str) -> RequestRow:
    """A pending request; whatever was pending for the alias is voided by this newer candidate."""
    void_pending(airlock, alias, f"a newer candidate ({model_id}) was proposed for {alias!r}", actor=actor)
    with airlock.meta.write() as db:
        number = db.execute("SELECT COUNT(*) FROM promotion_requests WHERE alias = ?", [alias]).fetchone()[0] + 1
        request_id = db["promotion_requests"].insert({
            "alias": alias, "staging_name": staging_name(alias, number), "model_id": model_id, "run_id": run_id,
            "author": author, "author_key": author_key, "manifest_digest": manifest_digest,
            "policy_version": policy.version, "policy_digest": policy.digest,
            "evaluation_digest": evaluation_digest, "scores_json": json.dumps(scores, sort_keys=True),
            "champion_id": champion_id, "state": RequestState.PENDING, "created_at": now(),
        }).last_pk
    airlock.meta.audit(actor, "gate.requested", alias, request=request_id, model_id=model_id,
                       policy=policy.digest, evaluation=evaluation_digest)
    return get_request(airlock, request_id)


def get_request(airlock: Airlock, request_id: int | str) -> RequestRow:
    try:
        number = int(request_id)
    except (TypeError, ValueError):
        raise NotFound(f"no promotion request {request_id!r} (requests are numbered)") from None
    row = airlock.meta.one("SELECT * FROM promotion_requests WHERE id = ?", (number,))
    if row is None:
        raise NotFound(f"no promotion request {request_id!r}")
    return row  # type: ignore[return-value]


def visible_request(airlock: Airlock, viewer: Viewer, request_id: int | str) -> RequestRow:
    """A request the viewer may see; one it may not is NotFound, like one that does not exist."""
    row = get_request(airlock, request_id)
    if not viewer.reviewer and row["author"] != viewer.holder:
        raise NotFound(f"no promotion request {request_id!r}")
    return row


def list_requests(airlock: Airlock, viewer: Viewer, *, state: str | None = None, limit: int = 100) -> list[dict]:
    where, params = ["1 = 1"], []
    if not viewer.reviewer:
        where.append("author = ?")
        params.append(viewer.holder)
    if state:
        if state not in set(RequestState):
            raise InvalidInput(f"state {state!r}: a request is {', '.join(RequestState)}")
        where.append("state = ?")
        params.append(state)
    rows = airlock.meta.query(f"SELECT * FROM promotion_requests WHERE {' AND '.join(where)} "
                              "ORDER BY id DESC LIMIT ?", (*params, limit))
    return [summary(airlock, r) for r in rows]


def approvals_of(airlock: Airlock, request_id: int) -> list[dict]:
    return airlock.meta.query("SELECT * FROM approvals WHERE request_id = ? ORDER BY id", (request_id,))


def summary(airlock: Airlock, row: RequestRow) -> dict[str, Any]:
    approvals = [a for a in approvals_of(airlock, row["id"]) if a["verdict"] == "approve"]
    out = {k: v for k, v in row.items() if k != "scores_json"}
    out["scores"] = json.loads(row["scores_json"])
    out["approved_by"] = [a["holder"] for a in approvals]
    return out


def request_view(airlock: Airlock, viewer: Viewer, request_id: int | str) -> dict[str, Any]:
    """Everything about one request the viewer may know: scores, approvals, lineage and, for
    reviewers only, each example's answers by the three models."""
    row = visible_request(airlock, viewer, request_id)
    view = summary(airlock, row)
    view["approvals"] = [{k: a[k] for k in ("holder", "key_id", "verdict", "comment", "at")}
                         | {"signed": a["signature_json"] is not None} for a in approvals_of(airlock, row["id"])]
    evaluation = json.loads(airlock.store.get_bytes(row["evaluation_digest"]))
    view["evaluation"] = {"eval_set": (evaluation.get("eval_set") or {}).get("name"),
                          "answered_by": evaluation.get("answered_by")}
    if viewer.reviewer:
        view["examples"] = side_by_side(evaluation)
    return view


def side_by_side(evaluation: dict) -> list[dict]:
    """One entry per example: the prompt, the reference, and each model's answer and verdicts,
    with `differs` set where the candidate's answer is not the champion's (or the base's)."""
    answers = evaluation.get("answers", {})
    models = [m for m in ("base", "champion", "candidate") if m in answers]
    out = []
    for n, first in enumerate(answers.get("candidate", [])):
        entry = {"prompt": first["prompt"], "reference": first["reference"]}
        for m in models:
            a = answers[m][n]
            entry[m] = {"answer": a["answer"], "match": a["match"], "contains": a["contains"],
                        "loss": round(a["loss"], 4)}
        other = "champion" if "champion" in answers else "base"
        entry["differs"] = entry["candidate"]["answer"] != entry[other]["answer"]
        out.append(entry)
    return out


def _end(airlock: Airlock, where: str, params: list, state: RequestState, reason: str, actor: str) -> list[int]:
    with airlock.meta.write() as db:
        ids = [r[0] for r in db.execute(f"SELECT id FROM promotion_requests WHERE state = ? AND {where}",
                                        [RequestState.PENDING, *params]).fetchall()]
        for request_id in ids:
            db["promotion_requests"].update(request_id, {"state": state, "reason": reason, "decided_at": now()})
            db.execute("DELETE FROM aliases WHERE name = (SELECT staging_name FROM promotion_requests WHERE id = ?)",
                       [request_id])
    for request_id in ids:
        airlock.meta.audit(actor, f"gate.{state}", str(request_id), reason=reason)
    return ids


def void_pending(airlock: Airlock, alias: str, reason: str, *, actor: str) -> list[int]:
    return _end(airlock, "alias = ?", [alias], RequestState.VOIDED, reason, actor)


def void_for_model(airlock: Airlock, model_id: str, reason: str, *, actor: str) -> list[int]:
    return _end(airlock, "model_id = ?", [model_id], RequestState.VOIDED, reason, actor)


def reject(airlock: Airlock, request_id: int, reason: str, *, actor: str) -> None:
    _end(airlock, "id = ?", [request_id], RequestState.REJECTED, reason, actor)

"""A trainer against the promotion gate: a workflow that asks nothing of its candidate, an alias no
admin protected, an adapter of another base model, the policy's eval set, and a revoked adapter.

The policy's evaluation runs for real (the reference model, a real PEFT adapter, in-process);
serving's checks are the ones `deploy`, staging and the reconciler use.
"""

from __future__ import annotations

import pytest
from gate_support import approver, promoted, protect, real_candidate, request_for, signed_candidate

from airlock.datasets.service import Reader, get_dataset
from airlock.datasets.sharing import share_dataset
from airlock.errors import GateRefused, InvalidInput, NotFound
from airlock.promotion.approvals import APPROVE, decide
from airlock.promotion.records import write_record
from airlock.promotion.requests import Viewer, request_view
from airlock.serve.deploy import deploy, stage_candidate
from airlock.workflow.gatekeeper import propose, revoke

ALIAS = "prod"


def test_a_workflow_that_asks_nothing_cannot_weaken_the_policy(airlock, tmp_path):
    """Had it worked, `min_exact_match: 0` and `better_than_base: false` in a trainer's workflow
    would have staged (and, with approvals, served) a candidate that knows nothing."""
    protect(airlock, ALIAS, min_exact_match=0.5)
    model_id = real_candidate(airlock, tmp_path)
    with pytest.raises(GateRefused) as refused:
        propose(airlock, model_id=model_id, alias=ALIAS, run_id=None, base_path=airlock.settings.models_dir /
                "airlock-tiny", workflow_gate={"min_exact_match": 0.0, "better_than_base": False})
    assert "exact match 0.00 is under min_exact_match 0.50" in str(refused.value)
    assert "is not better than the base model" in str(refused.value)
    assert airlock.meta.query("SELECT * FROM promotion_requests") == []
    assert airlock.meta.query("SELECT * FROM aliases") == []
    audit = airlock.meta.one("SELECT detail_json FROM audit WHERE action = 'gate.refused' ORDER BY id DESC LIMIT 1")
    assert "under min_exact_match 0.50" in audit["detail_json"]


def test_an_alias_no_admin_protected_serves_nothing(airlock, tmp_path):
    """Had it worked, a trainer naming a fresh alias would have put its adapter in production."""
    model_id = signed_candidate(airlock, tmp_path)
    with pytest.raises(NotFound, match="has no promotion policy, so nothing is served under it"):
        propose(airlock, model_id=model_id, alias="brand-new", run_id=None, base_path=tmp_path)


def test_an_adapter_of_another_base_model_is_refused_everywhere(airlock, tmp_path):
    """Had it worked, an adapter trained on other weights that share the served model's name would
    have been loaded onto them."""
    protect(airlock, ALIAS, approvals=2)
    other = {"name": "airlock-tiny", "digest": "sha256:" + "9" * 64}
    model_id = signed_candidate(airlock, tmp_path, 5, base=other)
    with pytest.raises(GateRefused, match="not on the base model the engine serves"):
        propose(airlock, model_id=model_id, alias=ALIAS, run_id=None, base_path=tmp_path)
    request = request_for(airlock, model_id, ALIAS)  # as if it had got this far
    with pytest.raises(InvalidInput, match="an adapter is served only on the very base model it was trained on"):
        stage_candidate(airlock, request)
    for holder in ("bob", "carol"):
        decide(airlock, approver(holder), request["id"], APPROVE)
    write_record(airlock, request, actor="test")
    with pytest.raises(InvalidInput, match="with other weights"):
        deploy(airlock, model_id, ALIAS)


def test_a_trainer_cannot_read_the_policys_eval_set(airlock, tmp_path):
    """Had it worked, the trainer could train on the test its candidates are judged by."""
    protect(airlock, ALIAS)
    with pytest.raises(NotFound):
        get_dataset(airlock, "@operator/gate-eval", reader=Reader("alice"))
    request = request_for(airlock, signed_candidate(airlock, tmp_path), ALIAS, author="alice")
    mine = request_view(airlock, Viewer("alice"), request["id"])
    assert "examples" not in mine and mine["scores"]["candidate"]["exact_match"] == 1.0
    with pytest.raises(NotFound):
        request_view(airlock, Viewer("mallory"), request["id"])
    share_dataset(airlock, "gate-eval", ["alice"], reader=Reader("operator", reads_all=True), actor="os:test")
    with pytest.raises(InvalidInput, match="is shared with alice: a policy's eval set must be readable by admins"):
        protect(airlock, ALIAS, approvals=3)


def test_a_revoked_adapter_is_never_served_staged_or_proposed_again(airlock, tmp_path):
    """Had it worked, an adapter revoked for leaking data would be back under an alias by a
    `deploy`, a staging, or the next run that happens to produce the same bytes."""
    model_id, _ = promoted(airlock, tmp_path, ALIAS)
    out = revoke(airlock, model_id, "it leaks a customer's name", actor="os:test")
    assert out == {"model_id": model_id, "revoked": True, "aliases": {}}
    with pytest.raises(GateRefused, match="revoked"):
        deploy(airlock, model_id, ALIAS)
    with pytest.raises(GateRefused, match="never staged again"):
        propose(airlock, model_id=model_id, alias=ALIAS, run_id=None, base_path=tmp_path)
    with pytest.raises(GateRefused, match="revoked"):
        stage_candidate(airlock, {"model_id": model_id, "staging_name": "prod.candidate-9", "alias": ALIAS,
                                  "author": "alice", "id": 9})
    row = airlock.meta.one("SELECT action, detail_json FROM audit WHERE action = 'model.revoked'")
    assert "customer" in row["detail_json"]

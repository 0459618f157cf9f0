"""Approvals that must not count: replayed onto another candidate, made after a policy change, one
person's second key, the author's own, an admin's where the policy counts approvers only, after a
rejection, and signatures that are not a model-role key's over this very request.

Each test uses the real service functions on a real home; where an approval is replayed, it is
copied as someone with write access to the database would, and the promotion record that would
serve it is what refuses.
"""

from __future__ import annotations

import json
from datetime import UTC, datetime

import pytest
from gate_support import approver, protect, request_for, signed_candidate

from airlock.errors import Conflict, Forbidden, IntegrityFailure, InvalidInput, NotReady
from airlock.promotion.approvals import APPROVE, REJECT, bound_of, decide, sign_approval
from airlock.promotion.records import write_record
from airlock.serve.deploy import deploy
from airlock.trust.ceremony import init_root
from airlock.trust.keyfiles import load_signing_key
from airlock.trust.pinned import pin_first, trust_dir

ALIAS = "prod"
PASSPHRASE = b"a passphrase for this test's root only"


def test_an_approval_replayed_onto_another_candidate_does_not_count(airlock, tmp_path):
    """Had it worked, bob's approval of one adapter would have promoted another he never saw."""
    protect(airlock, ALIAS)
    first = request_for(airlock, signed_candidate(airlock, tmp_path, 1), ALIAS)
    decide(airlock, approver("bob"), first["id"], APPROVE, comment="the first one")
    second = request_for(airlock, signed_candidate(airlock, tmp_path, 2), ALIAS)  # voids the first
    bobs = airlock.meta.one("SELECT * FROM approvals WHERE request_id = ?", (first["id"],))
    with airlock.meta.write() as db:
        db["approvals"].insert({**{k: v for k, v in bobs.items() if k != "id"}, "request_id": second["id"]})
    decide(airlock, approver("carol"), second["id"], APPROVE, comment="ok")
    with pytest.raises(IntegrityFailure) as refused:
        write_record(airlock, second, actor="test")
    assert any("bound to another candidate" in p for p in refused.value.problems)
    assert "1 approval(s) by distinct people, the policy asks 2" in refused.value.problems


def test_a_policy_change_voids_pending_requests_and_their_approvals(airlock, tmp_path):
    """Had it worked, approvals given under a lenient policy would promote under a strict one."""
    protect(airlock, ALIAS)
    request = request_for(airlock, signed_candidate(airlock, tmp_path), ALIAS)
    decide(airlock, approver("bob"), request["id"], APPROVE)
    protect(airlock, ALIAS, min_exact_match=0.9)
    state = airlock.meta.one("SELECT state, reason FROM promotion_requests WHERE id = ?", (request["id"],))
    assert state["state"] == "voided" and "policy of 'prod' changed (version 2)" in state["reason"]
    with pytest.raises(Conflict, match="is voided"):
        decide(airlock, approver("carol"), request["id"], APPROVE)
    assert airlock.meta.one("SELECT 1 AS x FROM aliases WHERE name = ?", (request["staging_name"],)) is None


def test_one_persons_two_keys_count_once(airlock, tmp_path):
    protect(airlock, ALIAS)
    request = request_for(airlock, signed_candidate(airlock, tmp_path), ALIAS)
    decide(airlock, approver("bob", "key-one"), request["id"], APPROVE)
    with pytest.raises(Conflict, match="one person counts once"):
        decide(airlock, approver("bob", "key-two"), request["id"], APPROVE)


def test_the_author_never_decides_on_its_own_candidate(airlock, tmp_path):
    """Had it worked, a trainer holding an approver key too would wave its own adapter through."""
    protect(airlock, ALIAS, admins_may_approve=True)
    request = request_for(airlock, signed_candidate(airlock, tmp_path), ALIAS, author="alice", author_key="k-trainer")
    for key in (approver("alice", "k-approver"), approver("alice", "k-admin", admin=True),
                approver("someone", "k-trainer")):  # another holder on the author's very key
        with pytest.raises(Forbidden, match="is the author of request"):
            decide(airlock, key, request["id"], APPROVE)
    with pytest.raises(Forbidden, match="models:approve"):
        decide(airlock, approver("zed", may_approve=False), request["id"], APPROVE)


def test_admins_count_only_where_the_policy_says_so(airlock, tmp_path):
    protect(airlock, ALIAS)
    request = request_for(airlock, signed_candidate(airlock, tmp_path), ALIAS)
    with pytest.raises(Forbidden, match="approvers' keys only"):
        decide(airlock, approver("dave", admin=True), request["id"], APPROVE)
    protect(airlock, ALIAS, admins_may_approve=True)
    request = request_for(airlock, signed_candidate(airlock, tmp_path, 3), ALIAS)
    assert decide(airlock, approver("dave", admin=True), request["id"], APPROVE)["state"] == "pending"


def test_one_rejection_ends_the_request(airlock, tmp_path):
    protect(airlock, ALIAS)
    request = request_for(airlock, signed_candidate(airlock, tmp_path), ALIAS)
    with pytest.raises(InvalidInput, match="needs a reason"):
        decide(airlock, approver("bob"), request["id"], REJECT, comment=" ")
    assert decide(airlock, approver("bob"), request["id"], REJECT, comment="wrong tone")["state"] == "rejected"
    with pytest.raises(Conflict, match="is rejected \\(rejected by bob: wrong tone\\)"):
        decide(airlock, approver("carol"), request["id"], APPROVE)


@pytest.fixture
def model_keys(airlock, tmp_path):
    """A trust root (one root key, one model key, one bundle key) pinned on this appliance."""
    made = init_root(tmp_path / "ceremony", root_keys=1, threshold=1, demo=True, passphrase=lambda _: PASSPHRASE)
    pin_first(trust_dir(airlock.settings), json.loads(made.root_path.read_text()), made.root.roles["root"].keyids,
              now=datetime.now(UTC))
    return {role: load_signing_key(paths[0], lambda _: PASSPHRASE) for role, paths in made.key_files.items()}


def test_signed_approvals_need_a_model_keys_signature_over_this_very_request(airlock, tmp_path, model_keys):
    """Had it worked, a signature made for one candidate, or by a key of another role, or none,
    would have stood for a model-role holder's approval."""
    protect(airlock, ALIAS, approvals=1, signed_approvals=True)
    model_id = signed_candidate(airlock, tmp_path, 1)
    request = request_for(airlock, model_id, ALIAS)
    with pytest.raises(InvalidInput, match="asks for signed approvals"):
        decide(airlock, approver("bob"), request["id"], APPROVE)
    elsewhere = {**bound_of(request), "model_id": "adp-000000000000"}
    with pytest.raises(IntegrityFailure, match="does not verify over this request's digests"):
        decide(airlock, approver("bob"), request["id"], APPROVE, signature=sign_approval(model_keys["model"], elsewhere))
    with pytest.raises(IntegrityFailure, match="not a key of the trust root's model role"):
        decide(airlock, approver("bob"), request["id"], APPROVE,
               signature=sign_approval(model_keys["bundle"], bound_of(request)))
    decide(airlock, approver("bob"), request["id"], APPROVE, signature=sign_approval(model_keys["model"],
                                                                                     bound_of(request)))
    write_record(airlock, request, actor="test")
    with pytest.raises(NotReady):  # the record, signatures included, holds: serving goes on to the engine
        deploy(airlock, model_id, ALIAS)

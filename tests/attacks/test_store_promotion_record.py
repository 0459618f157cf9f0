"""A promotion row or record edited in the database or the store: serving loads an adapter under a
production alias only with a valid, signed promotion record for that alias, and names what failed.

Each test makes a real approved promotion (two approvers, a signed record in the store), tampers
with it as someone with write access to the database or the store would, and asks serving
(`deploy` and the reconciler that restores aliases after an engine restart) to load it. An
untampered record gets past the check to the engine (absent here, so NotReady), which shows the
check is what stops the tampered ones.
"""

from __future__ import annotations

import base64
import json

import pytest
from gate_support import promoted, signed_candidate

from airlock.errors import IntegrityFailure, NotReady
from airlock.serve.deploy import deploy
from airlock.serve.reconcile import Reconciler

ALIAS = "prod"


def test_an_untampered_record_passes_the_check_and_goes_on_to_the_engine(airlock, tmp_path):
    model_id, _ = promoted(airlock, tmp_path, ALIAS)
    with pytest.raises(NotReady, match="engine is not running"):
        deploy(airlock, model_id, ALIAS)


def test_a_promotion_row_edited_in_the_database_is_refused(airlock, tmp_path):
    """Had it worked, the row would claim approvers the signed record never had."""
    model_id, promotion_id = promoted(airlock, tmp_path, ALIAS)
    row = airlock.meta.one("SELECT decision_json FROM promotions WHERE id = ?", (promotion_id,))
    record = json.loads(row["decision_json"])
    record["approvals"][0]["holder"] = "mallory"
    with airlock.meta.write() as db:
        db["promotions"].update(promotion_id, {"decision_json": json.dumps(record)})
    with pytest.raises(IntegrityFailure) as refused:
        deploy(airlock, model_id, ALIAS)
    assert "differs from the signed record (edited)" in str(refused.value.problems)


def test_a_record_flipped_in_the_store_is_refused(airlock, tmp_path):
    """Had it worked, bytes no one signed would have let an adapter serve."""
    model_id, promotion_id = promoted(airlock, tmp_path, ALIAS)
    digest = airlock.meta.one("SELECT record_digest FROM promotions WHERE id = ?", (promotion_id,))["record_digest"]
    hexdigest = digest.removeprefix("sha256:")
    blob = airlock.store.blobs / hexdigest[:2] / hexdigest
    data = bytearray(blob.read_bytes())
    data[len(data) // 2] ^= 0x01
    blob.chmod(0o600)
    blob.write_bytes(bytes(data))
    with pytest.raises(IntegrityFailure, match="has changed"):
        deploy(airlock, model_id, ALIAS)


def test_a_record_of_another_model_pointed_at_by_the_alias_row_is_refused(airlock, tmp_path):
    """Had it worked, one approval would have served any adapter: the alias row is edited to
    point a never-approved candidate at the approved one's promotion."""
    _, promotion_id = promoted(airlock, tmp_path, ALIAS)
    other = signed_candidate(airlock, tmp_path, seed=7)
    with airlock.meta.write() as db:
        db["aliases"].upsert({"name": ALIAS, "model_id": other, "lora_name": other, "base_model": "airlock-tiny",
                              "updated_at": "now", "promotion_id": promotion_id}, pk="name")
    restorer = Reconciler(airlock)
    row = airlock.meta.one("SELECT * FROM aliases WHERE name = ?", (ALIAS,))
    with pytest.raises(IntegrityFailure) as refused:
        restorer._may_serve(row)
    assert any("the record promotes" in p for p in refused.value.problems)
    with pytest.raises(IntegrityFailure, match="no promotion record"):
        restorer._may_serve({**row, "promotion_id": None})


def test_a_policy_edited_in_the_database_to_ask_fewer_approvals_is_refused(airlock, tmp_path):
    """Had it worked, lowering the policy in SQLite would have made a one-approval record valid."""
    model_id, _ = promoted(airlock, tmp_path, ALIAS)
    row = airlock.meta.one("SELECT version, policy_json FROM gate_policies WHERE alias = ?", (ALIAS,))
    rules = json.loads(row["policy_json"]) | {"approvals": 0}
    with airlock.meta.write() as db:
        db.execute("UPDATE gate_policies SET policy_json = ? WHERE alias = ?", [json.dumps(rules), ALIAS])
    with pytest.raises(IntegrityFailure, match="does not hash to its digest"):
        deploy(airlock, model_id, ALIAS)


def test_an_approval_removed_from_a_record_row_and_resigned_by_no_one_is_refused(airlock, tmp_path):
    """Had it worked, a record claiming one approver where the policy asks two would serve:
    the row and a new store blob are both rewritten, but nobody has the appliance key."""
    model_id, promotion_id = promoted(airlock, tmp_path, ALIAS)
    row = airlock.meta.one("SELECT decision_json, record_digest FROM promotions WHERE id = ?", (promotion_id,))
    envelope = json.loads(airlock.store.get_bytes(row["record_digest"]))
    record = json.loads(row["decision_json"])
    record["approvals"] = record["approvals"][:1]
    envelope["payload"] = base64.b64encode(json.dumps(record, sort_keys=True, separators=(",", ":")).encode()).decode()
    forged = airlock.store.put_bytes(json.dumps(envelope).encode())
    with airlock.meta.write() as db:
        db["promotions"].update(promotion_id, {"record_digest": forged, "decision_json": json.dumps(record)})
    with pytest.raises(IntegrityFailure, match="appliance's signature does not verify"):
        deploy(airlock, model_id, ALIAS)

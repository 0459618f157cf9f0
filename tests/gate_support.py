"""What the promotion gate's tests share: signed candidates, policies, requests and approved
promotions made with the real service functions on a real home (SQLite, folder store), without an
engine, so an attack on a record or an approval is tried where serving checks it."""

from __future__ import annotations

import json
import random
from pathlib import Path

from airlock.context import Airlock
from airlock.datasets.service import add_dataset
from airlock.models.adapters import get_model, register_adapter
from airlock.promotion.approvals import APPROVE, Approver, decide
from airlock.promotion.policy import PolicyRow, policy_for, set_policy
from airlock.promotion.records import write_record
from airlock.promotion.requests import RequestRow, open_request
from airlock.promotion.signing import sign_candidate
from airlock.serve.deploy import served_base_digest

EVAL_SET = Path(__file__).parents[1] / "examples" / "datasets" / "quickstart-eval.jsonl"
SCORES = {"base": {"loss": 3.0, "exact_match": 0.0, "contains": 0.0, "examples": 8},
          "candidate": {"loss": 0.5, "exact_match": 1.0, "contains": 1.0, "examples": 8}}


def signed_candidate(airlock: Airlock, tmp_path: Path, seed: int = 0, *, base: dict | None = None) -> str:
    """A stored, signed adapter of its own bytes (an adapter's files; nothing loads them here)."""
    folder = tmp_path / f"adapter-{seed}"
    folder.mkdir(parents=True)
    (folder / "adapter_config.json").write_text(json.dumps({"r": 8, "seed": seed}))
    (folder / "adapter_model.safetensors").write_bytes(random.Random(seed).randbytes(4096))
    tree = airlock.store.put_tree(folder)
    base = base or {"name": airlock.settings.serve_base_model, "digest": served_base_digest(airlock)}
    model_id = register_adapter(airlock, tree_digest=tree, base_model=base, dataset_digest="sha256:" + "0" * 64,
                                config={"seed": seed}, run_id=None)
    sign_candidate(airlock, model_id, {"eval_set": "test", **SCORES})
    return model_id


def protect(airlock: Airlock, alias: str, **rules) -> PolicyRow:
    """A policy for `alias` with an eval set of the operator's; two approvals unless told."""
    if not airlock.meta.one("SELECT 1 AS yes FROM datasets WHERE owner = 'operator' AND name = 'gate-eval'"):
        add_dataset(airlock, EVAL_SET, name="gate-eval", owner="operator", actor="os:test")
    return set_policy(airlock, alias, {"eval_set": "gate-eval", "approvals": 2, **rules}, actor="os:test",
                      holder="operator")


def request_for(airlock: Airlock, model_id: str, alias: str, *, author: str = "alice",
                author_key: str | None = None) -> RequestRow:
    evaluation = airlock.store.put_bytes(json.dumps({"scores": SCORES, "answers": {}, "model": model_id}).encode())
    return open_request(airlock, alias=alias, model_id=model_id, manifest_digest=get_model(airlock, model_id)[
        "manifest_digest"], run_id=None, author=author, author_key=author_key, policy=policy_for(airlock, alias),
        evaluation_digest=evaluation, scores=SCORES, champion_id=None, actor="test")


def approver(holder: str, key_id: str | None = None, *, admin: bool = False, may_approve: bool = True) -> Approver:
    return Approver(key_id=key_id or f"k-{holder}", holder=holder, may_approve=may_approve, is_admin=admin,
                    actor=f"key:{key_id or 'k-' + holder}")


def promoted(airlock: Airlock, tmp_path: Path, alias: str, seed: int = 0, *, model_id: str | None = None
             ) -> tuple[str, int]:
    """(model id, promotion id) of a candidate two approvers promoted to `alias` (a new signed one,
    or `model_id`): a signed record."""
    model_id = model_id or signed_candidate(airlock, tmp_path, seed)
    if policy_for(airlock, alias) is None:
        protect(airlock, alias)
    request = request_for(airlock, model_id, alias)
    for holder in ("bob", "carol"):
        decide(airlock, approver(holder), request["id"], APPROVE, comment="checked")
    promotion = write_record(airlock, request, actor="test")
    return model_id, promotion["id"]


def real_candidate(airlock: Airlock, tmp_path: Path, *, zero: bool = True, seed: int = 0, base: str | None = None
                   ) -> str:
    """A stored, signed PEFT LoRA adapter of the reference model (or of the served base model
    `base`), freshly initialised (its B matrices are zero, so it answers as the base does, unless
    `zero` is False): a candidate an evaluation can load."""
    import torch
    from peft import LoraConfig, get_peft_model
    from transformers import AutoModelForCausalLM

    base = base or airlock.settings.serve_base_model
    base_dir = airlock.settings.models_dir / base
    torch.manual_seed(seed)
    model = get_peft_model(AutoModelForCausalLM.from_pretrained(base_dir, dtype=torch.float32), LoraConfig(
        r=4, lora_alpha=8, task_type="CAUSAL_LM", target_modules=["q_proj", "v_proj"], init_lora_weights=zero))
    folder = tmp_path / ("peft-adapter" if seed == 0 else f"peft-adapter-{seed}")
    if base != airlock.settings.serve_base_model:
        folder = folder.with_name(f"{folder.name}-{base}")
    model.save_pretrained(folder)
    tree = airlock.store.put_tree(folder)
    model_id = register_adapter(airlock, tree_digest=tree, base_model={"name": base,
                                "digest": served_base_digest(airlock, base)}, dataset_digest="sha256:" + "0" * 64,
                                config={}, run_id=None)
    sign_candidate(airlock, model_id, {"eval_set": "test", **SCORES})
    return model_id

"""The `evaluate.compare` stage: candidate against base on an eval set, then sign the candidate."""

from __future__ import annotations

import json
import tempfile
from pathlib import Path

from pydantic import BaseModel, ConfigDict, Field

from airlock.datasets.service import load_records
from airlock.errors import StageFailed
from airlock.promotion.evaluate import compare
from airlock.promotion.thresholds import problems_of
from airlock.models.adapters import get_model
from airlock.promotion.signing import sign_candidate
from airlock.workflow.stage import StageContext, StageType


class EvaluateParams(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)

    eval_set: str
    min_exact_match: float = Field(0.0, ge=0.0, le=1.0)
    max_length: int = Field(512, ge=8)


def run_evaluate(ctx: StageContext) -> dict:
    params: EvaluateParams = ctx.params
    model_id = ctx.find_upstream("model_id")
    model = get_model(ctx.airlock, model_id)
    records = load_records(ctx.airlock, ctx.datasets["eval_set"])
    ctx.progress(force=True, phase="scoring", examples=len(records))
    with tempfile.TemporaryDirectory(prefix="airlock-eval-") as tmp:
        adapter = ctx.airlock.store.get_tree(model["tree_digest"], Path(tmp) / "adapter")
        scores = compare(ctx.base_path, adapter, records, params.max_length)
    base, candidate = scores["base"].summary(), scores["candidate"].summary()
    results = {"eval_set": ctx.datasets["eval_set"], "base": base, "candidate": candidate,
               "min_exact_match": params.min_exact_match}
    answers = ctx.airlock.store.put_bytes(
        json.dumps({"candidate": scores["candidate"].answers, "base": scores["base"].answers}).encode()
    )
    if problems := problems_of({"base": base, "candidate": candidate}, min_exact_match=params.min_exact_match):
        raise StageFailed(f"candidate {model_id}: " + "; ".join(problems))
    manifest = sign_candidate(ctx.airlock, model_id, results)
    return {"model_id": model_id, "eval": results, "answers": answers, "manifest": manifest}


EVALUATE_COMPARE = StageType(
    name="evaluate.compare",
    params=EvaluateParams,
    run=run_evaluate,
    batch=True,
    summary="Mean loss and exact match of greedy answers, base model vs candidate; signs a passing candidate",
    dataset_params=("eval_set",),
)

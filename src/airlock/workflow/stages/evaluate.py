"""The `evaluate.compare` stage: candidate against base on an eval set, then sign the candidate."""

from __future__ import annotations

import contextlib
import json
import secrets
import shutil
import tempfile
from pathlib import Path

from pydantic import BaseModel, ConfigDict, Field

from airlock.datasets.service import load_records
from airlock.errors import AirlockError, StageFailed
from airlock.promotion.engine_eval import compare_through_engine
from airlock.promotion.evaluate import compare
from airlock.promotion.thresholds import problems_of
from airlock.models.adapters import get_model
from airlock.promotion.signing import sign_candidate
from airlock.serve.deploy import served_base_digest
from airlock.serve.engine import engine_client, read_secret
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
        if _engine_serves(ctx):
            ctx.progress(force=True, phase="scoring through the engine", examples=len(records))
            scores = _compare_through_engine(ctx, model, adapter, records, params.max_length)
        else:
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


def _engine_serves(ctx: StageContext) -> bool:
    """Whether the engine is up and serves the run's base model: it then generates the answers,
    batched, in seconds where the in-process loop takes minutes on a real model."""
    client = engine_client(ctx.airlock.settings)
    return client.is_healthy() and served_base_digest(ctx.airlock) == ctx.base_model["digest"]


def _compare_through_engine(ctx: StageContext, model: dict, adapter: Path, records: list, max_length: int) -> dict:
    """The candidate is not signed yet, so it is loaded under a name of its own that no alias
    points at and the gateway never routes to, from a copy in the serving folder (which the
    engine can read where the worker's temporary folder may not be), and taken out again after."""
    settings = ctx.airlock.settings
    client = engine_client(settings)
    name = f"eval-{model['id']}-{secrets.token_hex(4)}"
    copy = shutil.copytree(adapter, settings.serving_dir / name)
    try:
        client.load_adapter(name, copy)
        try:
            return compare_through_engine(
                settings.vllm_url, {"Authorization": f"Bearer {read_secret(settings)}"}, ctx.base_path, adapter,
                records, max_length, base_model=settings.serve_base_model, candidate=name,
                socket=settings.engine_socket if settings.engine_transport == "uds" else None)
        finally:
            with contextlib.suppress(AirlockError):  # an engine that went away holds nothing
                client.unload_adapter(name)
    finally:
        shutil.rmtree(copy, ignore_errors=True)


EVALUATE_COMPARE = StageType(
    name="evaluate.compare",
    params=EvaluateParams,
    run=run_evaluate,
    batch=True,
    summary="Mean loss and exact match of greedy answers, base model vs candidate; signs a passing candidate",
    dataset_params=("eval_set",),
)

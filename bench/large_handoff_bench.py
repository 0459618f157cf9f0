"""Benchmark 17: the hand-off of a large adapter to every replica of its base model.

An appliance as `airlock up` runs it from an engine list: the shipped instruct model on two
replicas (CPU cores 0 and 1), vLLM allowing rank 256. The adapter is a PEFT LoRA of rank 256 on
every linear projection of the instruct model (float32: over 300 MB), stored, registered and signed
as a fine-tune's would be. Each repetition unloads it from both replicas (untimed), then starts
the clock where benchmark 4 does, when the workflow's gate has passed: `propose()` to an
unprotected alias (verify the signed manifest and every file again and make the copy the engines
read, once; then every replica hot-loads it and answers a smoke test, at the same time; then the
signed record and the switch), and a streamed request under the
alias until its first token. The target is the issue's: at most 1 s per replica.
"""

from __future__ import annotations

import os
import tempfile
import time
from collections import defaultdict
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import httpx

from airlock.access.keys import create_key
from airlock.config import REPO_ROOT, Settings
from airlock.context import Airlock
from bench.handoff_bench import ALIAS, first_token
from bench.procs import ApplianceProcess, free_port
from bench.report import Section
from bench.serving import KEY_RPM, KEY_TPM
from bench.stats import median

MODEL = "smollm2-135m-instruct"
RANK = 256
REPLICAS = 2
TARGET_PER_REPLICA_S = 1.0
# What the gate reads from the signed evaluation (the bench times the hand-off, not an evaluation).
SCORES = {"base": {"loss": 3.0, "exact_match": 0.0, "contains": 0.0, "examples": 8},
          "candidate": {"loss": 0.5, "exact_match": 1.0, "contains": 1.0, "examples": 8}}
TARGETS = ["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"]


def large_adapter(airlock: Airlock, folder: Path, seed: int) -> tuple[str, int]:
    """(model id, bytes) of a signed rank-256 adapter of the instruct model, random (not zero)."""
    import torch
    from peft import LoraConfig, get_peft_model
    from transformers import AutoModelForCausalLM

    from airlock.models.adapters import register_adapter
    from airlock.promotion.signing import sign_candidate
    from airlock.serve.deploy import served_base_digest

    torch.manual_seed(seed)
    base = AutoModelForCausalLM.from_pretrained(airlock.settings.models_dir / MODEL, dtype=torch.float32)
    model = get_peft_model(base, LoraConfig(r=RANK, lora_alpha=RANK, target_modules=TARGETS, task_type="CAUSAL_LM",
                                            init_lora_weights=False))
    with torch.no_grad():  # small enough that the adapter answers much as the base does
        for name, weight in model.named_parameters():
            if "lora_B" in name:
                weight.mul_(1e-3)
    model.save_pretrained(folder)
    size = sum(f.stat().st_size for f in folder.rglob("*") if f.is_file())
    tree = airlock.store.put_tree(folder)
    model_id = register_adapter(airlock, tree_digest=tree, base_model={"name": MODEL, "digest": served_base_digest(
        airlock, MODEL)}, dataset_digest="sha256:" + "0" * 64, config={"r": RANK}, run_id=None)
    sign_candidate(airlock, model_id, {"eval_set": "bench", **SCORES})
    return model_id, size


@contextmanager
def per_replica() -> Iterator[dict[str, dict[str, float]]]:
    """Seconds spent verifying and copying the adapter ("all") and, by the folder of the engine
    client that called them, in each replica's load and smoke test (the replicas' run at once)."""
    from airlock.serve import deploy
    from airlock.serve.engine import EngineClient

    spent: dict[str, dict[str, float]] = defaultdict(lambda: defaultdict(float))
    real_copy, real_load, real_smoke = deploy.verified_copy, EngineClient.load_adapter, EngineClient.smoke_test

    def timed(real, label, by_client):
        def call(*args, **kwargs):
            started = time.perf_counter()
            try:
                return real(*args, **kwargs)
            finally:
                spent[args[0].settings.engine_dir.name if by_client else "all"][label] += time.perf_counter() - started
        return call

    deploy.verified_copy = timed(real_copy, "verify", False)
    EngineClient.load_adapter, EngineClient.smoke_test = timed(real_load, "load", True), timed(real_smoke, "smoke", True)
    try:
        yield spent
    finally:
        deploy.verified_copy, EngineClient.load_adapter, EngineClient.smoke_test = real_copy, real_load, real_smoke


def one_handoff(airlock: Airlock, client: httpx.Client, model_id: str) -> dict:
    from airlock.access.holders import OPERATOR
    from airlock.promotion.policy import set_policy
    from airlock.serve.engine import engine_client
    from airlock.serve.fleet import fleet, replica_settings
    from airlock.workflow.gatekeeper import propose

    set_policy(airlock, ALIAS, {"approvals": 0}, actor="bench", holder=OPERATOR)
    for replica in fleet(airlock.settings):  # untimed: every replica must pay a real load
        engine = engine_client(replica_settings(airlock.settings, replica))
        if model_id in engine.loaded_adapters():
            engine.unload_adapter(model_id)
    passed = time.perf_counter()
    with per_replica() as spent:
        propose(airlock, model_id=model_id, alias=ALIAS, run_id=None, base_path=airlock.settings.models_dir / MODEL,
                actor="bench")
    deployed = time.perf_counter()
    token, answered_by = first_token(client)
    if answered_by != model_id:
        raise RuntimeError(f"the first request after the switch was answered by {answered_by}, not {model_id}")
    names = {replica_settings(airlock.settings, r).engine_dir.name: r.name for r in fleet(airlock.settings)}
    return {"total": deployed - passed + token, "first token": token,
            "replicas": {names.get(folder, folder): dict(parts) for folder, parts in spent.items()}}


def run(quick: bool) -> Section:
    started, load0 = time.perf_counter(), os.getloadavg()[0]
    reps = 2 if quick else 4
    section = Section(
        title="17. Hand-off of a large adapter to every replica",
        what=(f"`airlock up` with `{MODEL}` on {REPLICAS} replicas (CPU cores 0 and 1, max LoRA rank {RANK}). A PEFT "
              f"LoRA of rank {RANK} on every linear projection (float32), signed as a fine-tune's. From the gate's pass "
              "to the first streamed token under the alias: `propose()` (verify the signed manifest and every file and "
              "copy them once; every replica loads and smoke-tests at the same time; the signed record, the switch) "
              "and the "
              f"first request. {reps} hand-offs, two such adapters taking turns, each unloaded from both replicas "
              f"before its turn. Target: at most {TARGET_PER_REPLICA_S:g} s per replica."))
    with tempfile.TemporaryDirectory(prefix="airlock-l-") as tmp:  # short: the sockets' paths must fit
        scratch = Path(tmp)
        settings = Settings(home=scratch / "home", models_dir=REPO_ROOT / "offline_models", serve_base_model=MODEL,
                            gateway_port=free_port(), store_backend="local", engine_transport="uds",
                            vllm_max_lora_rank=RANK, vllm_max_loras=2,
                            engines=f'[{{"model": "{MODEL}", "replicas": {REPLICAS}, "cpus": ["0", "1"]}}]')
        app = ApplianceProcess(settings)
        try:
            app.start()
            airlock = Airlock.open(settings)
            _, key = create_key(airlock.meta, "bench-large", role="inference", rpm=KEY_RPM, tpm=KEY_TPM, actor="bench")
            # Two, taking turns as in benchmark 4: each hand-off replaces the adapter the alias serves.
            adapters = [large_adapter(airlock, scratch / f"adapter-{seed}", seed) for seed in (0, 1)]
            size = adapters[0][1]
            with httpx.Client(base_url=app.url, headers={"Authorization": f"Bearer {key}"}, trust_env=False,
                              timeout=300) as client:
                client.get("/healthz")
                runs = [one_handoff(airlock, client, adapters[n % 2][0]) for n in range(reps)]
        finally:
            app.stop()
    per = [r["total"] / REPLICAS for r in runs]
    section.add(f"gate pass to first token per replica, median of {reps} ({size / 1e6:.0f} MB adapter)",
                "", f"{median(per):.2f} s ({median([r['total'] for r in runs]):.2f} s for {REPLICAS})", "",
                f"<= {TARGET_PER_REPLICA_S:g} s", median(per) <= TARGET_PER_REPLICA_S)
    rows = []
    for n, r in enumerate(runs, 1):
        for name, parts in sorted(r["replicas"].items()):
            if name != "all":
                rows.append([n, name, "", f"{parts.get('load', 0):.2f}", f"{parts.get('smoke', 0):.2f}", "", ""])
        rows.append([n, "all", f"{r['replicas']['all'].get('verify', 0):.2f}", "", "", f"{r['first token']:.2f}",
                     f"{r['total']:.2f}"])
    section.details.append(("Each hand-off (s); the replicas load and answer their smoke tests at the same time",
                            ("#", "replica", "verify and copy once", "load", "smoke test", "first token", "total"),
                            rows))
    section.seconds, section.load = time.perf_counter() - started, (load0, os.getloadavg()[0])
    section.notes.append(f"The adapter: {size / 1e6:.0f} MB on disk, rank {RANK} on {', '.join(TARGETS)}.")
    return section

"""Training beside the engine on one GPU: the decision with its numbers, and a run that asks for
GPUs this host lacks refused before it starts (the gateway's 503 while the engine sleeps is in
tests/gateway/test_engine_sleep.py; the real thing on a GPU in tests/gpu)."""

from __future__ import annotations

import pytest

from airlock.config import Settings
from airlock.context import Airlock
from airlock.workflow.gpu_share import fit_beside_engine
from airlock.workflow.scheduler import capacity_of
from worker_support import WorkerProcess, run_row, submit_training, wait_status

H100 = {0: 81559.0, 1: 81559.0}


def settings_with(airlock, **values) -> Airlock:
    return Airlock(settings=Settings(home=airlock.settings.home, **values), meta=airlock.meta, store=airlock.store)


def test_a_run_that_does_not_fit_beside_the_engine_is_refused_with_the_numbers(airlock):
    fit = fit_beside_engine(airlock, [0], 12000, H100)
    assert fit.decision == "refuse"
    assert ("it needs about 12000 MiB on GPU 0, and the engine takes 90% of its 81559 MiB "
            "(AIRLOCK_VLLM_GPU_MEMORY_UTILIZATION=0.9), leaving 8156 MiB") in fit.message
    assert "AIRLOCK_ENGINE_SLEEP_FOR_TRAINING=true" in fit.message
    assert fit_beside_engine(airlock, [0], 8000, H100).decision == "fits"
    assert fit_beside_engine(airlock, [1], 60000, H100).decision == "fits"  # not the engine's GPU
    sleepy = settings_with(airlock, engine_sleep_for_training=True)
    assert fit_beside_engine(sleepy, [0], 60000, H100).decision == "sleep"
    assert fit_beside_engine(sleepy, [0], 81000, H100).decision == "refuse"  # not even with the engine asleep
    roomy = settings_with(airlock, vllm_gpu_memory_utilization=0.5)
    assert fit_beside_engine(roomy, [0], 40000, H100).decision == "fits"


def test_runs_get_the_gpus_the_engine_does_not_use_first(airlock):
    assert capacity_of(Settings(home=airlock.settings.home, worker_gpus="0,1,2", engine_gpus="0")).gpus == [1, 2, 0]


def test_a_run_asking_for_a_gpu_this_host_lacks_fails_before_it_starts(airlock, tiny_models_dir, tmp_path):
    path_run = submit_training(airlock, tmp_path, "gpu-run")
    with airlock.meta.write() as db:  # as `resources: {gpus: 1}` in the spec writes it
        db.execute("UPDATE runs SET resources_json = json_set(resources_json, '$.gpus', 1) WHERE id = ?", [path_run])
    worker = WorkerProcess(airlock.settings.home, AIRLOCK_WORKER_GPUS="none")
    try:
        run = wait_status(airlock, path_run, "failed", timeout=60)
    finally:
        worker.stop()
    assert run["error"] == ("the run cannot start on this worker: it asks for 1 GPU(s) and this worker has 0 "
                            "(AIRLOCK_WORKER_GPUS); lower resources.gpus")
    assert run["started_at"] is None and run_row(airlock, path_run)["attempts"] == 0


@pytest.mark.parametrize("gpus", [2])
def test_the_spec_claims_gpus(airlock, tiny_models_dir, tmp_path, gpus):
    import yaml

    from airlock.workflow.submit import submit
    from worker_support import DATA

    spec = {"name": "g", "base_model": "airlock-tiny", "dataset": str(DATA), "resources": {"gpus": gpus},
            "stages": [{"name": "finetune", "uses": "finetune.lora", "with": {"epochs": 1}}]}
    (tmp_path / "g.yaml").write_text(yaml.safe_dump(spec))
    run_id = submit(airlock, tmp_path / "g.yaml", actor="os:test")["run_id"]
    resources = airlock.meta.one("SELECT resources_json FROM runs WHERE id = ?", (run_id,))["resources_json"]
    assert '"gpus": 2' in resources and '"memory_mb"' in resources

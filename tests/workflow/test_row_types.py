"""The rows that cross packages (runs, stages, models, base models) hold exactly the keys their
TypedDicts list, with states as the enums of airlock.states, read from a real SQLite database and
the real tiny model folder. A key added to a row but not to its type, or the other way round,
fails here."""

from __future__ import annotations

import json

from airlock.models.adapters import ModelListing, ModelRow, get_model, list_models, register_adapter
from airlock.models.catalog import BaseModelRow, list_base_models
from airlock.states import (RUN_ACTIVE, RUN_FINISHED, RUN_RESUMABLE, STAGE_FINISHED, CancelOutcome, RunState,
                            StageState)
from airlock.workflow.queue import QueuedRun, ShownRun, cancel_run, list_queue, operator, show_run
from airlock.workflow.runs import RunDetail, RunRow, StageRow, get_run, list_runs
from worker_support import submit_training

OPERATOR = operator("os:test")


def keys(typed: type) -> set[str]:
    return set(typed.__required_keys__) | set(typed.__optional_keys__)


def test_run_and_stage_rows_hold_their_typed_keys_and_states(airlock, tiny_models_dir, tmp_path):
    run_id = submit_training(airlock, tmp_path, "typed")
    assert [set(r) for r in list_runs(airlock)] == [keys(RunRow)]
    assert [set(r) for r in list_queue(airlock, OPERATOR)] == [keys(QueuedRun)]
    detail, shown = get_run(airlock, run_id), show_run(airlock, OPERATOR, run_id)
    assert set(detail) == keys(RunDetail) and set(shown) == keys(ShownRun)
    assert [set(s) for s in shown["stages"]] == [keys(StageRow)]
    assert shown["status"] is RunState.QUEUED and shown["stages"][0]["status"] is StageState.PENDING
    assert shown["position"] == 1 and shown["stages"][0]["skipped"] is False

    assert cancel_run(airlock, OPERATOR, run_id)["status"] is CancelOutcome.CANCELLED
    shown = show_run(airlock, OPERATOR, run_id)
    assert shown["status"] is RunState.CANCELLED and shown["stages"][0]["status"] is StageState.NOT_RUN
    # What the database holds, and what JSON says, is still the plain text.
    stored = airlock.meta.one("SELECT status FROM runs WHERE id = ?", (run_id,))["status"]
    assert stored == "cancelled" and type(stored) is str
    assert json.loads(json.dumps(shown))["stages"][0]["status"] == "not-run"


def test_model_rows_hold_their_typed_keys_and_every_column(airlock, tiny_models_dir):
    model_id = register_adapter(airlock, tree_digest="sha256:" + "ab" * 32,
                                base_model={"name": "airlock-tiny", "digest": "sha256:" + "cd" * 32},
                                dataset_digest="sha256:" + "ef" * 32, config={"rank": 4}, run_id="run-typed")
    row = get_model(airlock, model_id)
    columns = [c["name"] for c in airlock.meta.query("SELECT name FROM pragma_table_info('models')")]
    assert list(row) == list(ModelRow.__annotations__) == columns  # a new column needs its place in ModelRow
    assert row["id"] == model_id and row["manifest_digest"] is None and json.loads(row["config_json"]) == {"rank": 4}
    assert [set(m) for m in list_models(airlock)] == [keys(ModelListing)]
    assert list_models(airlock)[0]["promotions"] == 0 and list_models(airlock)[0]["aliases"] is None
    tiny = next(m for m in list_base_models(airlock.settings) if m["name"] == "airlock-tiny")
    assert set(tiny) == keys(BaseModelRow) and tiny["digest"].startswith("sha256:")


def test_every_run_state_is_waiting_held_or_finished_and_exactly_one():
    waiting = {RunState.QUEUED}
    assert waiting | RUN_ACTIVE | RUN_FINISHED == set(RunState)
    assert len(waiting) + len(RUN_ACTIVE) + len(RUN_FINISHED) == len(RunState)
    assert RUN_RESUMABLE == RUN_FINISHED - {RunState.SUCCEEDED}
    assert set(StageState) - STAGE_FINISHED == {StageState.PENDING, StageState.RUNNING}
    # Rows read back from SQLite hold plain strings: they must compare and hash as the enums do.
    assert "running" in RUN_ACTIVE and "not-run" in STAGE_FINISHED and RunState("interrupted") in RUN_RESUMABLE

"""Canary rollouts' rules without an engine: when a breach is called, when a window may promote,
and every start that must be refused (named) before anything is loaded."""

from __future__ import annotations

from collections import deque

import pytest
from gate_support import promoted

from airlock.errors import Conflict, GateRefused, InvalidInput, NotFound
from airlock.meta.db import now
from airlock.serve.canary import (CANDIDATE, CHAMPION, Arm, Canary, breach, enough_to_promote, parse_window,
                                  start_canary)
from airlock.states import CanaryState

ALIAS = "prod"


def canary(**limits) -> Canary:
    values = {"id": 1, "alias": ALIAS, "champion_id": "adp-a", "candidate_id": "adp-b", "promotion_id": 1,
              "percent": 10.0, "window_s": 600.0, "max_error_rate": 0.05, "max_latency_ratio": 1.5, "min_requests": 10,
              "state": CanaryState.RUNNING, "reason": None, "stats_json": None, "started_by": "test",
              "started_at": now(), "ends_at": now(), "decided_at": None}
    return Canary(**(values | limits))


def arm(requests: int, errors: int = 0, latency_s: float = 0.1) -> Arm:
    return Arm(requests, errors, deque([latency_s] * (requests - errors)))


def test_the_error_rate_is_judged_once_the_candidate_has_its_minimum():
    limits = canary()
    assert breach(limits, {CANDIDATE: arm(9, errors=9), CHAMPION: arm(100)}) is None  # 9 < 10 answers
    reason = breach(limits, {CANDIDATE: arm(10, errors=1), CHAMPION: arm(100)})
    assert reason.startswith("the candidate failed 1 of 10 requests (10.0%), above the 5.0% allowed")
    assert breach(limits, {CANDIDATE: arm(20, errors=1), CHAMPION: arm(100)}) is None  # 5% is allowed


def test_the_p95_latency_is_judged_against_the_champion_once_both_have_their_minimum():
    limits = canary()
    slow = {CANDIDATE: arm(10, latency_s=0.4), CHAMPION: arm(10, latency_s=0.2)}
    assert breach(limits, slow) == ("the candidate's p95 latency is 400 ms against the champion's 200 ms (2.00x), "
                                    "above the 1.5x allowed")
    assert breach(limits, {CANDIDATE: arm(10, latency_s=0.4), CHAMPION: arm(9, latency_s=0.2)}) is None
    assert breach(limits, {CANDIDATE: arm(10, latency_s=0.29), CHAMPION: arm(10, latency_s=0.2)}) is None


def test_a_window_promotes_only_with_enough_answers_on_both_sides():
    limits = canary()
    assert enough_to_promote(limits, {CANDIDATE: arm(10), CHAMPION: arm(50)}) is None
    assert enough_to_promote(limits, {CANDIDATE: arm(3), CHAMPION: arm(50)}) == (
        "too few requests to judge: the candidate answered 3, of the 10 required each")


def test_the_figures_survive_a_round_trip_through_the_row():
    figures = Arm(5, 1, deque([0.1, 0.2, 0.3, 0.4]))
    again = Arm.from_dict(figures.as_dict())
    assert (again.requests, again.errors, list(again.latencies)) == (5, 1, [0.1, 0.2, 0.3, 0.4])
    assert again.p95 == pytest.approx(figures.p95)


@pytest.mark.parametrize(("text", "seconds"), [("90s", 90), ("10m", 600), ("2h", 7200), ("1d", 86400), ("45", 45)])
def test_windows_read_as_durations(text, seconds):
    assert parse_window(text) == seconds


def test_a_window_that_is_no_duration_is_named():
    with pytest.raises(InvalidInput, match="--window '10 minutes': a duration such as 90s"):
        parse_window("10 minutes")


@pytest.fixture
def champion(airlock, tmp_path) -> str:
    """ALIAS served by a promoted model (the row as the switch writes it; no engine here)."""
    model_id, promotion_id = promoted(airlock, tmp_path, ALIAS, seed=1)
    with airlock.meta.write() as db:
        db["aliases"].insert({"name": ALIAS, "model_id": model_id, "lora_name": model_id,
                              "base_model": airlock.settings.serve_base_model, "updated_at": now(),
                              "staged_for": None, "audience": None, "promotion_id": promotion_id,
                              "revoked_note": None})
    return model_id


def start(airlock, candidate: str, **overrides):
    options = {"percent": 10.0, "window_s": 600.0, "max_error_rate": 0.05, "max_latency_ratio": 1.5,
               "min_requests": 10} | overrides
    return start_canary(airlock, ALIAS, candidate, actor="test", **options)


def test_an_alias_without_a_champion_is_refused(airlock, tmp_path):
    model_id, _ = promoted(airlock, tmp_path, ALIAS)
    with pytest.raises(NotFound, match="alias 'prod' serves no champion"):
        start(airlock, model_id)


def test_the_champion_itself_is_refused(airlock, champion):
    with pytest.raises(InvalidInput, match="is already the champion of 'prod'"):
        start(airlock, champion)


def test_a_candidate_without_a_promotion_record_for_the_alias_is_refused(airlock, champion, tmp_path):
    """Had it worked, a canary would serve part of an alias's traffic with a model no approver passed."""
    other, _ = promoted(airlock, tmp_path / "other", "another-alias", seed=2)
    with pytest.raises(GateRefused, match=f"model {other} has no promotion record for 'prod'"):
        start(airlock, other)
    assert not airlock.meta.query("SELECT id FROM canaries")


@pytest.mark.parametrize(("option", "value", "words"), [
    ("percent", 0.0, "--percent 0: between 0 and 100"),
    ("percent", 100.0, "--percent 100: between 0 and 100, both excluded (100 is a promotion)"),
    ("window_s", 5.0, "--window 5 s: from 10 s"),
    ("max_error_rate", 1.0, "--max-error-rate 1: a fraction"),
    ("max_latency_ratio", 0.5, "--max-latency-ratio 0.5: at least 1"),
    ("min_requests", 0, "--min-requests 0: at least 1"),
])
def test_bad_limits_are_named(airlock, champion, tmp_path, option, value, words):
    candidate, _ = promoted(airlock, tmp_path / "candidate", ALIAS, seed=3)
    with pytest.raises(InvalidInput, match=words.replace("(", r"\(").replace(")", r"\)")):
        start(airlock, candidate, **{option: value})


def test_a_second_canary_on_the_alias_is_refused(airlock, champion, tmp_path):
    candidate, promotion_id = promoted(airlock, tmp_path / "candidate", ALIAS, seed=3)
    with airlock.meta.write() as db:  # one running already (as start_canary writes it)
        db["canaries"].insert({"alias": ALIAS, "champion_id": champion, "candidate_id": candidate,
                               "promotion_id": promotion_id, "percent": 5, "window_s": 60, "max_error_rate": 0.1,
                               "max_latency_ratio": 2, "min_requests": 5, "state": "running", "started_by": "test",
                               "started_at": now(), "ends_at": now()})
    with pytest.raises(Conflict, match=f"alias 'prod' has a canary of {candidate} already"):
        start(airlock, candidate)

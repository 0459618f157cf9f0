"""The gate's one threshold rule and how a workflow can only make a policy stricter."""

from __future__ import annotations

import pytest

from airlock.promotion.policy import Policy, policy_digest, stricter_of
from airlock.promotion.thresholds import beats, problems_of

BASE = {"loss": 3.0, "exact_match": 0.0, "contains": 0.25}
CHAMPION = {"loss": 0.6, "exact_match": 0.75, "contains": 0.75}


def cand(**kw) -> dict:
    return {"loss": 0.5, "exact_match": 0.75, "contains": 0.875} | kw


@pytest.mark.parametrize(("candidate", "metric", "margin", "wins"), [
    (cand(), "exact_match", 0.0, True),  # a tie on exact match, decided by the lower loss
    (cand(loss=0.7), "exact_match", 0.0, False),  # the tie, and a higher loss
    (cand(exact_match=0.875), "exact_match", 0.125, True),  # better by exactly the margin
    (cand(exact_match=0.8), "exact_match", 0.125, False),
    (cand(), "contains", 0.1, True),
    (cand(loss=0.59), "loss", 0.0, True),
    (cand(loss=0.6), "loss", 0.0, False),  # a loss tie is no win
    (cand(loss=0.55), "loss", 0.1, False),
])
def test_beats_the_champion_on_the_policys_metric_by_its_margin(candidate, metric, margin, wins):
    assert beats(candidate, CHAMPION, metric, margin) is wins


def test_problems_name_each_rule_with_the_numbers():
    scores = {"base": BASE, "champion": CHAMPION, "candidate": cand(exact_match=0.5, loss=0.9)}
    problems = problems_of(scores, min_exact_match=0.6, better_than_serving=True, margin=0.1)
    assert problems == [
        "exact match 0.50 is under min_exact_match 0.60 (base model: 0.00)",
        "the candidate does not beat the serving champion by the margin 0.1 on exact_match: exact match 0.50 "
        "against the champion's exact match 0.75",
    ]
    assert problems_of({"candidate": cand()}) == ["no evaluation results for the candidate and the base model"]
    # With no champion yet, the first candidate is judged against the base and the minimum only.
    assert problems_of({"base": BASE, "candidate": cand()}, better_than_serving=True, margin=0.5) == []


def test_a_workflow_makes_a_policy_stricter_never_weaker():
    policy = Policy(min_exact_match=0.8, approvals=2, better_than_serving=True, margin=0.05)
    merged, notes = stricter_of(policy, {"min_exact_match": 0.0, "better_than_serving": False,
                                         "better_than_base": False, "margin": 0.0})
    assert merged == policy
    assert notes == ["min_exact_match 0 is weaker than the policy's 0.8, which applies",
                     "better_than_base: false is weaker than the policy, which requires it",
                     "better_than_serving: false is weaker than the policy, which requires it"]
    stricter, notes = stricter_of(policy, {"min_exact_match": 0.9, "margin": 0.2})
    assert (stricter.min_exact_match, stricter.margin, notes) == (0.9, 0.2, [])


def test_a_policy_digest_covers_the_alias_and_every_rule():
    policy = Policy(approvals=2)
    assert policy_digest("a", policy) != policy_digest("b", policy)
    assert policy_digest("a", policy) != policy_digest("a", Policy(approvals=2, margin=0.01))
    assert policy_digest("a", policy) == policy_digest("a", Policy(approvals=2))

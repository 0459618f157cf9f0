"""The one threshold rule of the promotion gate: what scores a candidate needs to pass.

Used by the workflow's own evaluation and by the alias's policy alike, so the two can never
disagree about what "better" means.
"""

from __future__ import annotations

HIGHER_IS_BETTER = {"exact_match": True, "contains": True, "loss": False}


def improvement(candidate: dict, other: dict, metric: str) -> float:
    """How much better the candidate is than `other` on `metric` (negative: worse)."""
    gain = candidate[metric] - other[metric]
    return gain if HIGHER_IS_BETTER[metric] else -gain


def beats(candidate: dict, other: dict, metric: str = "exact_match", margin: float = 0.0) -> bool:
    """Better by at least `margin` on `metric`. With no margin it must be strictly better, and
    on an exact-match or contains tie a lower answer loss decides."""
    gain = improvement(candidate, other, metric)
    if margin > 0:
        return gain >= margin - 1e-12
    if gain != 0:
        return gain > 0
    return metric != "loss" and candidate["loss"] < other["loss"]


def describe(scores: dict, metric: str) -> str:
    return f"{metric.replace('_', ' ')} {scores[metric]:.3f}" if metric == "loss" else \
        f"{metric.replace('_', ' ')} {scores[metric]:.2f}"


def problems_of(scores: dict[str, dict], *, min_exact_match: float = 0.0, better_than_base: bool = True,
                better_than_serving: bool = False, metric: str = "exact_match", margin: float = 0.0) -> list[str]:
    """Why a candidate fails the rule, as sentences with the numbers; empty: it passes.
    `scores` holds the summaries of "candidate", "base" and, where an alias serves one, "champion"."""
    candidate, base, champion = scores.get("candidate"), scores.get("base"), scores.get("champion")
    if not candidate or not base:
        return ["no evaluation results for the candidate and the base model"]
    problems = []
    if candidate["exact_match"] < min_exact_match:
        problems.append(f"exact match {candidate['exact_match']:.2f} is under min_exact_match {min_exact_match:.2f} "
                        f"(base model: {base['exact_match']:.2f})")
    if better_than_base and not beats(candidate, base):
        problems.append(f"the candidate is not better than the base model: exact match {candidate['exact_match']:.2f} "
                        f"vs {base['exact_match']:.2f}, loss {candidate['loss']:.3f} vs {base['loss']:.3f}")
    if better_than_serving and champion and not beats(candidate, champion, metric, margin):
        problems.append(f"the candidate does not beat the serving champion by the margin {margin:g} on {metric}: "
                        f"{describe(candidate, metric)} against the champion's {describe(champion, metric)}")
    return problems

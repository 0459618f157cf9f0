"""The promotion gate's Prometheus metrics, read from SQLite when scraped (never stale): requests by
state, the time from a request to its approval, and the gate's refusals by reason."""

from __future__ import annotations

import json
from datetime import datetime

from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, SummaryMetricFamily

from airlock.meta import Meta
from airlock.states import RequestState

# A refusal's reasons, as the threshold rule and the checks word them, by the label they count under.
REASONS = (("under min_exact_match", "min_exact_match"), ("not better than the base", "better_than_base"),
           ("does not beat the serving champion", "better_than_serving"), ("no evaluation results", "no_evaluation"))


def reason_label(problem: str) -> str:
    return next((label for words, label in REASONS if words in problem), "integrity")


class GateCollector:
    def __init__(self, meta: Meta) -> None:
        self.meta = meta

    def collect(self):
        states = GaugeMetricFamily("airlock_gate_requests", "Promotion requests by state.", labels=["state"])
        counts = {r["state"]: r["n"] for r in self.meta.query(
            "SELECT state, COUNT(*) AS n FROM promotion_requests GROUP BY state")}
        for state in RequestState:
            states.add_metric([state], counts.get(state, 0))
        yield states
        waited = [(datetime.fromisoformat(r["decided_at"]) - datetime.fromisoformat(r["created_at"])).total_seconds()
                  for r in self.meta.query("SELECT created_at, decided_at FROM promotion_requests "
                                           "WHERE state = ? AND decided_at IS NOT NULL", (RequestState.APPROVED,))]
        summary = SummaryMetricFamily("airlock_gate_seconds_to_approval",
                                      "Seconds from a promotion request to its last approval.")
        summary.add_metric([], count_value=len(waited), sum_value=sum(waited))
        yield summary
        refusals = CounterMetricFamily("airlock_gate_refusals", "Candidates the gate refused, by reason "
                                       "(a refusal with several reasons counts under each).", labels=["reason"])
        tally: dict[str, int] = {label: 0 for _, label in REASONS} | {"integrity": 0}
        for row in self.meta.query("SELECT detail_json FROM audit WHERE action = 'gate.refused'"):
            detail = json.loads(row["detail_json"] or "{}")
            problems = detail.get("reasons") or detail.get("reason") or []
            for label in {reason_label(p) for p in ([problems] if isinstance(problems, str) else problems)}:
                tally[label] += 1
        for label, n in sorted(tally.items()):
            refusals.add_metric([label], n)
        yield refusals

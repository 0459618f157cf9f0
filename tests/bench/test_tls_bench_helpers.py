"""The TLS benchmark's arithmetic on wrk results: pure helpers, no processes."""

from __future__ import annotations

import pytest

from bench.tls_bench import Plan, plans
from bench.wrk import WrkResult


def result(latencies_us: dict[int, int], seconds: float) -> WrkResult:
    return WrkResult(connections=1, requests=sum(latencies_us.values()), seconds=seconds,
                     errors={}, histogram=latencies_us)


def test_plan_figures_per_path():
    plan = Plan("1 client", 1, rounds=2, seconds=2)
    plan.runs["http"] = [(result({400: 1000}, 1.0), 0.4), (result({500: 1000}, 1.0), 0.4)]
    plan.runs["https"] = [(result({600: 500}, 1.0), 0.3), (result({550: 500}, 1.0), 0.3)]
    assert plan.requests("http") == 2000 and plan.rps("https") == pytest.approx(500)
    assert plan.wall_ms("http") == pytest.approx(1.0) and plan.wall_ms("https") == pytest.approx(2.0)
    assert plan.cpu_us("http") == pytest.approx(400) and plan.cpu_us("https") == pytest.approx(600)
    assert plan.paired_p50() == pytest.approx([0.2, 0.05])  # round by round, https minus http, in ms
    assert plan.latency("https").p50_ms == pytest.approx(0.575)


def test_only_the_one_client_keep_alive_plans_carry_a_verdict():
    chosen = plans(quick=False)
    judged = [p for p in chosen if p.judged]
    assert [p.connections for p in judged] == [1, 1] and not any(p.new_connection for p in judged)
    assert [p.new_connection for p in chosen].count(True) == 1
    assert all(p.rounds % 2 == 0 for p in chosen)  # each path leads as often as it follows

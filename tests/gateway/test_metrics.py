"""The gateway's metrics as numbers: quantiles read from its histograms the way Prometheus reads
them, the Serving page's figures, and each engine's own figures passed on with its name."""

from __future__ import annotations

import time

import pytest
from prometheus_client.parser import text_string_to_metric_families

from airlock.gateway.engine_metrics import EngineMetrics
from airlock.gateway.metrics import Answer, Metrics, quantile

INF = float("inf")


def test_quantiles_interpolate_within_the_bucket_as_histogram_quantile_does():
    # 10 observations: 4 up to 0.1 s, 4 more up to 0.5 s, 2 more up to 1 s.
    buckets = [(0.1, 4.0), (0.5, 8.0), (1.0, 10.0), (INF, 10.0)]
    assert quantile(0.5, buckets) == pytest.approx(0.1 + 0.4 * (5 - 4) / 4)  # rank 5 of 10: 0.2
    assert quantile(0.95, buckets) == pytest.approx(0.5 + 0.5 * (9.5 - 8) / 2)  # 0.875
    assert quantile(0.2, buckets) == pytest.approx(0.05)  # the first bucket starts at 0
    # A rank in +Inf: the highest finite bound, as Prometheus answers.
    assert quantile(0.99, [(0.1, 1.0), (1.0, 1.0), (INF, 3.0)]) == 1.0
    assert quantile(0.5, [(0.1, 0.0), (INF, 0.0)]) is None
    assert quantile(0.5, []) is None


def test_the_serving_figures_add_up_streams_and_read_quantiles_per_model():
    metrics = Metrics()
    now = time.perf_counter()
    for seconds, stream in ((0.02, False), (0.04, False), (0.2, True), (3.0, True)):
        answer = Answer("support", "tiny", stream, started=now - seconds, engine="tiny")
        if stream:
            answer.first_token_s = seconds / 10
        metrics.observe_completion(answer.finished((7, 5)))
    metrics.observe_completion(Answer("tiny", "tiny", False, started=now, engine="tiny").finished((3, 1)))
    metrics.count_completion_error("support", "engine_5xx")
    metrics.count_completion_error("support", "client_disconnected")
    rows = {row.model: row for row in metrics.by_model()}
    support = rows["support"]
    assert (support.engine, support.answered, support.generated_tokens, support.errors) == ("tiny", 4, 20, 2)
    # 4 answers in the buckets ..0.025 (1), ..0.05 (1), ..0.25 (1), ..5.0 (1): rank 2 ends the 0.05 bucket.
    assert support.latency[0] == pytest.approx(0.05)
    assert support.latency[1] == pytest.approx(2.5 + 2.5 * (3.8 - 3) / 1)  # rank 3.8 in (2.5, 5]
    assert support.first_token[0] == pytest.approx(0.01 + 0.015 * (1 - 0) / 1)  # 0.02 and 0.3: rank 1 ends (0.01, 0.025]
    assert rows["tiny"].answered == 1 and rows["tiny"].first_token == (None, None, None)
    assert rows["tiny"].errors == 0


def scrape_text(metrics: Metrics) -> dict[tuple[str, frozenset], float]:
    return {(s.name, frozenset(s.labels.items())): s.value
            for family in text_string_to_metric_families(metrics.render()) for s in family.samples}


VLLM_TEXT = """\
# HELP vllm:num_requests_running Number of requests in model execution batches.
# TYPE vllm:num_requests_running gauge
vllm:num_requests_running{engine="0",model_name="tiny.weights"} 2.0
# HELP vllm:kv_cache_usage_perc KV-cache usage. 1 means 100 percent usage.
# TYPE vllm:kv_cache_usage_perc gauge
vllm:kv_cache_usage_perc{engine="0",model_name="tiny.weights"} 0.25
# HELP vllm:num_preemptions_total Cumulative number of preemption from the engine.
# TYPE vllm:num_preemptions_total counter
vllm:num_preemptions_total{engine="0",model_name="tiny.weights"} 3.0
# HELP vllm:iteration_tokens_total Not passed on.
# TYPE vllm:iteration_tokens_total histogram
vllm:iteration_tokens_total_bucket{engine="0",le="+Inf",model_name="tiny.weights"} 9.0
vllm:iteration_tokens_total_count{engine="0",model_name="tiny.weights"} 9.0
vllm:iteration_tokens_total_sum{engine="0",model_name="tiny.weights"} 90.0
"""


def test_each_engines_figures_are_passed_on_with_its_name_and_a_silent_engine_shows_as_down():
    def stuck() -> str:
        raise TimeoutError("no answer in 2 s")

    metrics = Metrics()
    metrics.registry.register(EngineMetrics({"tiny": lambda: VLLM_TEXT, "big": stuck,
                                             "odd": lambda: '{"not": "prometheus text"}'}))
    m = scrape_text(metrics)
    labels = {"engine": "tiny", "engine_core": "0", "model_name": "tiny.weights"}
    assert m[("vllm:num_requests_running", frozenset(labels.items()))] == 2.0
    assert m[("vllm:kv_cache_usage_perc", frozenset(labels.items()))] == 0.25
    assert m[("vllm:num_preemptions_total", frozenset(labels.items()))] == 3.0
    assert not any(name.startswith("vllm:iteration_tokens") for name, _ in m)
    assert m[("airlock_engine_up", frozenset({"engine": "tiny"}.items()))] == 1.0
    assert m[("airlock_engine_up", frozenset({"engine": "big"}.items()))] == 0.0
    assert m[("airlock_engine_up", frozenset({"engine": "odd"}.items()))] == 0.0  # garbage is no answer
    assert not any(dict(labels).get("engine") == "big" for name, labels in m if name.startswith("vllm:"))

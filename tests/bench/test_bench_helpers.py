"""The benchmarks' pure helpers: percentiles, ratios, markdown tables, child environments.

Only helpers are tested here; the benchmarks themselves run with `python -m bench`, never in
the test suite (a timed assertion in a unit test is not a benchmark).
"""

from __future__ import annotations

import math

import pytest

from airlock.config import Settings
from bench.procs import settings_env
from bench.report import Section, document, markdown_table, split_sections
from bench.stats import Latency, median, percentile, ratio


def test_percentile_interpolates_like_numpy_linear():
    values = [15, 20, 35, 40, 50]
    assert percentile(values, 0) == 15
    assert percentile(values, 100) == 50
    assert percentile(values, 50) == 35
    assert percentile(values, 40) == pytest.approx(29.0)  # numpy.percentile(values, 40) == 29.0
    assert percentile(values, 99) == pytest.approx(49.6)


def test_percentile_ignores_input_order_and_handles_one_value():
    assert percentile([3, 1, 2], 50) == 2
    assert percentile([7.5], 99) == 7.5
    assert median([4, 1, 3, 2]) == 2.5


@pytest.mark.parametrize("q", [-1, 100.5])
def test_percentile_refuses_out_of_range(q):
    with pytest.raises(ValueError):
        percentile([1, 2], q)


def test_percentile_refuses_empty_sample():
    with pytest.raises(ValueError):
        percentile([], 50)


def test_ratio_and_latency_summary():
    assert ratio(3, 2) == 1.5
    assert ratio(1, 0) == math.inf
    lat = Latency.of([10.0, 20.0, 30.0])
    assert (lat.n, lat.p50_ms) == (3, pytest.approx(20.0))
    assert lat.mean_ms == pytest.approx(20.0)
    assert lat.get("p99") == pytest.approx(29.8)


def test_markdown_table_escapes_pipes_and_checks_width():
    table = markdown_table(("a", "b"), [[1, "x|y"], ["two\nlines", 2]])
    assert table.splitlines() == ["| a | b |", "| --- | --- |", "| 1 | x\\|y |", "| two lines | 2 |"]
    with pytest.raises(ValueError):
        markdown_table(("a", "b"), [[1]])


def test_section_verdicts_and_rendering():
    section = Section(title="demo", what="what it measures")
    section.add("p50", "1.0 ms", "1.5 ms", "1.500", "<= +2 ms", True)
    section.add("info", "1", "2", "2.000", "(information)", None)
    assert not section.failed
    section.add("p99", "1.0 ms", "9.0 ms", "9.000", "<= +2 ms", False)
    assert section.failed
    text = section.render()
    assert text.startswith("## demo\n\nwhat it measures\n")
    assert "| p99 | 1.0 ms | 9.0 ms | 9.000 | <= +2 ms | FAIL |" in text
    assert "| info | 1 | 2 | 2.000 | (information) | n/a |" in text


def test_a_benchmark_that_could_not_run_says_why_and_is_no_pass():
    section = Section(title="2. Gateway capacity", what="", not_run="wrk is not installed")
    assert section.outcome == "NOT RUN"
    assert "**Not run:** wrk is not installed" in section.render()
    passed = Section(title="1. Fine-tuning", what="w")
    passed.add("x", "1", "1", "1.000", ">= 0.97", True)
    text = document([passed, section], threads=1, command="python -m bench")
    assert "Overall: 1. Fine-tuning: PASS; 2. Gateway capacity: NOT RUN." in text


def test_child_environment_carries_the_settings_and_drops_the_callers_airlock_variables(tmp_path, monkeypatch):
    monkeypatch.setenv("AIRLOCK_DEFAULT_RPM", "5")
    monkeypatch.setenv("AIRLOCK_HOME", "/elsewhere")
    settings = Settings(home=tmp_path / "home", gateway_port=18123, engine_transport="tcp", worker_nice=10)
    env = settings_env(settings)
    assert env["AIRLOCK_HOME"] == str(tmp_path / "home")
    assert env["AIRLOCK_GATEWAY_PORT"] == "18123"
    assert (env["AIRLOCK_ENGINE_TRANSPORT"], env["AIRLOCK_WORKER_NICE"]) == ("tcp", "10")
    assert "AIRLOCK_DEFAULT_RPM" not in env
    assert "AIRLOCK_ENGINE_HOME" not in env  # unset settings are left to their defaults


def test_a_partial_rerun_replaces_its_sections_and_keeps_the_others():
    first = [Section(title=f"{n}. bench {n}", what=f"first run of {n}") for n in (1, 2, 3)]
    first[1].add("x", "1", "2", "2.000", "<= 1", False)
    old = document(first, threads=1, command="python -m bench")
    kept = split_sections(old)
    assert sorted(kept) == [1, 2, 3] and kept[2].startswith("## 2. bench 2\n")
    again = Section(title="2. bench 2", what="second run of 2")
    again.add("x", "1", "1", "1.000", "<= 1", True)
    again.command = "python -m bench --only two"
    text = document([again], threads=1, command="python -m bench --only two", kept=kept)
    assert "first run of 1" in text and "first run of 3" in text
    assert "first run of 2" not in text and "second run of 2" in text
    assert "the sections it did not run are kept from the run before" in text
    assert "kept from the run before" not in old
    assert "Overall: 1. bench 1: PASS; 2. bench 2: PASS; 3. bench 3: PASS." in text
    assert "(`python -m bench --only two`," in text
    assert text.index("## 1.") < text.index("## 2.") < text.index("## 3.")


def test_gateway_metrics_are_read_by_route_status_and_upstream_error():
    from bench.procs import parse_metrics

    from airlock.gateway.metrics import Metrics

    metrics = Metrics()
    for _ in range(1600):
        metrics.count_request("/v1/chat/completions", 200)
    metrics.count_request("/v1/chat/completions", 503)
    metrics.count_request("/v1/chat/completions", 503)
    metrics.observe_upstream("tiny", 20.0)
    metrics.observe_upstream("other", 6.25)
    metrics.count_upstream_error("tiny", "unreachable")
    metrics.count_upstream_error("other", "unreachable")
    counts = parse_metrics(metrics.render())
    assert counts["requests"] == {("/v1/chat/completions", "200"): 1600, ("/v1/chat/completions", "503"): 2}
    assert counts["upstream_errors"] == {("unreachable",): 2}
    assert counts["upstream"] == {("sum",): 26.25, ("count",): 2}


def test_a_benchmark_stopped_by_an_error_is_reported_as_such_and_kept_as_such():
    stopped = Section(title="3. Gateway overhead", what="", error="RuntimeError: 40 of 1600 requests failed")
    assert stopped.outcome == "ERROR"
    text = document([stopped], threads=1, command="python -m bench")
    assert "**Stopped by an error:** RuntimeError: 40 of 1600 requests failed" in text
    assert "3. Gateway overhead: ERROR" in document([], threads=1, command="x", kept=split_sections(text))

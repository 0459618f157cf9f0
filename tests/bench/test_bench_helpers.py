"""The benchmarks' pure helpers: percentiles, ratios, markdown tables, SSE parsing.

Only helpers are tested here; the benchmarks themselves run with `python -m bench`, never in
the test suite (a timed assertion in a unit test is not a benchmark).
"""

from __future__ import annotations

import math

import pytest

from bench.loadgen import first_content_seconds
from bench.report import Section, markdown_table
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
    lat = Latency.of([0.010, 0.020, 0.030])
    assert (lat.n, lat.p50_ms) == (3, pytest.approx(20.0))
    assert lat.mean_ms == pytest.approx(20.0)


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


def test_first_content_skips_role_only_and_done_events():
    lines = [
        (0.010, 'data: {"choices": [{"delta": {"role": "assistant", "content": ""}}]}'),
        (0.011, ""),
        (0.020, 'data: {"choices": [{"delta": {"content": "The"}}]}'),
        (0.030, "data: [DONE]"),
    ]
    assert first_content_seconds(lines) == 0.020
    assert first_content_seconds([(0.1, "data: [DONE]")]) is None

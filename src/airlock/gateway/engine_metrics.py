"""Each engine's own vLLM figures in the gateway's /metrics, read from the engine at each scrape.

A scraper never reaches an engine itself: it listens on a private socket and wants its secret.
The gateway asks it for its /metrics when it is scraped and passes on the families a site watches
(requests running and waiting, KV-cache use, preemptions, tokens, whether it sleeps) under their
vLLM names, with an `engine` label naming the engine; vLLM's own `engine` label (its engine
core's index inside one server) becomes `engine_core`. An engine that does not answer within
SCRAPE_TIMEOUT_S shows as `airlock_engine_up{engine} 0` and contributes nothing else: a scrape
never waits on a stuck engine for long.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Iterator

from prometheus_client.core import GaugeMetricFamily, Metric
from prometheus_client.parser import text_string_to_metric_families

log = logging.getLogger("airlock.gateway")

SCRAPE_TIMEOUT_S = 2.0
PASSED_ON = ("vllm:num_requests_running", "vllm:num_requests_waiting", "vllm:kv_cache_usage_perc",
             "vllm:num_preemptions", "vllm:prompt_tokens", "vllm:generation_tokens", "vllm:engine_sleep_state")


class EngineMetrics:
    """A prometheus_client collector: `engines` maps each engine's name to a call that returns
    its /metrics text (raising when it cannot)."""

    def __init__(self, engines: dict[str, Callable[[], str]]) -> None:
        self.engines = engines

    def collect(self) -> Iterator[Metric]:
        up = GaugeMetricFamily("airlock_engine_up", "1 when the engine answered the gateway's scrape of its "
                               "metrics, 0 when it did not (stopped, restarting, stuck).", labels=["engine"])
        families: dict[str, Metric] = {}
        for engine, scrape in self.engines.items():
            try:
                # Parsed here too: an engine answering something else than Prometheus text is
                # as good as one that did not answer.
                parsed = list(text_string_to_metric_families(scrape()))
            except Exception as exc:  # whatever the reason, the scrape of the others goes on
                log.info("engine %s did not give its metrics: %s", engine, exc)
                up.add_metric([engine], 0)
                continue
            up.add_metric([engine], 1)
            for family in parsed:
                if family.name in PASSED_ON:
                    merged = families.setdefault(family.name, Metric(family.name, family.documentation,
                                                                     family.type))
                    for sample in family.samples:
                        labels = dict(sample.labels)
                        if "engine" in labels:
                            labels["engine_core"] = labels.pop("engine")
                        merged.add_sample(sample.name, {**labels, "engine": engine}, sample.value)
        yield up
        yield from families.values()

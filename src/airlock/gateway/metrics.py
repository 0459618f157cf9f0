"""The gateway's Prometheus metrics, every one through prometheus_client in a registry of this
gateway's own: requests by route and status; completions by model and engine (latency and time
to first token as histograms, so p50/p95/p99 can be read, tokens, errors by kind); the time spent
waiting on each engine; failed authentications by door; and, read at each scrape, each engine's
own vLLM figures with an `engine` label (engine_metrics.py).

Label values come from what the gateway resolved, never from what a client sent: a model label
is a served alias or base model (an unknown name is refused before anything is counted), a route
label the route's template. A client cannot grow the label set.
"""

from __future__ import annotations

import time
from dataclasses import dataclass

from prometheus_client import CollectorRegistry, Counter, Histogram, generate_latest

# Seconds. A completion on a CPU engine takes from tens of milliseconds (a few tokens on a small
# model) to minutes (a long answer on a busy host); the buckets cover both ends.
LATENCY_BUCKETS = (0.01, 0.025, 0.05, 0.075, 0.1, 0.15, 0.25, 0.5, 0.75, 1.0, 1.5, 2.5, 5.0, 10.0, 20.0, 40.0,
                   80.0, 160.0, 320.0, 640.0)
UPSTREAM_BUCKETS = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 120.0, 600.0)


class Metrics:
    def __init__(self) -> None:
        self.registry = registry = CollectorRegistry()
        self.requests = Counter("airlock_gateway_requests", "Requests the gateway answered, by route and status.",
                                ["route", "status"], registry=registry)
        self.upstream = Histogram("airlock_gateway_upstream_seconds", "Time from sending a request to an engine "
                                  "until its response headers arrive, by engine.", ["engine"],
                                  buckets=UPSTREAM_BUCKETS, registry=registry)
        self.upstream_errors = Counter("airlock_gateway_upstream_errors", "Requests an engine could not answer, "
                                       "by engine and kind.", ["engine", "kind"], registry=registry)
        self.latency = Histogram("airlock_gateway_completion_seconds", "Completions answered (HTTP 200), from the "
                                 "request's arrival until its last bytes go out, by the model asked for (an alias or a base "
                                 "model), the engine that answered, and streaming or not.",
                                 ["model", "engine", "stream"], buckets=LATENCY_BUCKETS, registry=registry)
        self.first_token = Histogram("airlock_gateway_time_to_first_token_seconds", "Streamed completions: from "
                                     "the request's arrival to the first generated event sent on, by model and "
                                     "engine.", ["model", "engine"], buckets=LATENCY_BUCKETS, registry=registry)
        self.tokens = Counter("airlock_gateway_tokens", "Tokens of answered completions as the engine counted "
                              "them, by model, engine and kind (prompt, generated); rate() of the generated "
                              "ones is tokens per second.", ["model", "engine", "kind"], registry=registry)
        self.completion_errors = Counter("airlock_gateway_completion_errors", "Completions of a served model "
                                         "that failed, by model and kind: the engine's status (engine_4xx, "
                                         "engine_5xx), an engine unreachable, timing out or breaking off, an "
                                         "adapter not loaded, a client hanging up.", ["model", "kind"],
                                         registry=registry)
        self.auth_failures = Counter("airlock_gateway_auth_failures", "Failed authentications (a wrong, "
                                     "unknown, revoked or expired key; a failed sign-in), by door.", ["door"],
                                     registry=registry)
        self.auth_refused = Counter("airlock_gateway_auth_throttled", "Authentications refused with 429 "
                                    "after too many failures from one address or for one key id, by door.",
                                    ["door"], registry=registry)
        # labels() validates and locks on every call; the children of the per-request counters
        # are kept here once made (the label sets are small and fixed: see the module's note).
        self._request_children: dict[tuple[str, int], object] = {}

    def count_auth_failure(self, door: str) -> None:
        self.auth_failures.labels(door=door).inc()

    def count_auth_throttled(self, door: str) -> None:
        self.auth_refused.labels(door=door).inc()

    def count_request(self, route: str, status: int) -> None:
        if (child := self._request_children.get((route, status))) is None:
            child = self._request_children[(route, status)] = self.requests.labels(route=route, status=str(status))
        child.inc()

    def observe_upstream(self, engine: str, seconds: float) -> None:
        self.upstream.labels(engine=engine).observe(seconds)

    def count_upstream_error(self, engine: str, kind: str) -> None:
        self.upstream_errors.labels(engine=engine, kind=kind).inc()

    def observe_completion(self, answer: Answer) -> None:
        model, engine = answer.model, answer.engine
        self.latency.labels(model=model, engine=engine, stream=str(answer.stream).lower()).observe(answer.seconds)
        if answer.first_token_s is not None:
            self.first_token.labels(model=model, engine=engine).observe(answer.first_token_s)
        if answer.prompt_tokens:
            self.tokens.labels(model=model, engine=engine, kind="prompt").inc(answer.prompt_tokens)
        if answer.generated_tokens:
            self.tokens.labels(model=model, engine=engine, kind="generated").inc(answer.generated_tokens)

    def count_completion_error(self, model: str, kind: str) -> None:
        self.completion_errors.labels(model=model, kind=kind).inc()

    def render(self) -> str:
        return generate_latest(self.registry).decode()

    def by_model(self) -> list[ModelFigures]:
        """Each (model, engine)'s completions since the gateway started, streamed or not, with
        quantiles read from the histograms as Prometheus reads them (the Serving page's table)."""
        latency = _buckets(self.latency, ("model", "engine"))
        first = _buckets(self.first_token, ("model", "engine"))
        tokens = {(s.labels["model"], s.labels["engine"]): s.value for s in _samples(self.tokens)
                  if s.name.endswith("_total") and s.labels["kind"] == "generated"}
        errors: dict[str, float] = {}
        for s in _samples(self.completion_errors):
            if s.name.endswith("_total"):
                errors[s.labels["model"]] = errors.get(s.labels["model"], 0) + s.value
        rows = []
        for (model, engine), buckets in sorted(latency.items()):
            ttft = first.get((model, engine), [])
            rows.append(ModelFigures(model, engine, int(buckets[-1][1]),
                                     tuple(quantile(q, buckets) for q in QUANTILES),
                                     tuple(quantile(q, ttft) for q in QUANTILES), int(tokens.get((model, engine), 0)),
                                     int(errors.get(model, 0))))
        return rows


QUANTILES = (0.5, 0.95, 0.99)


@dataclass(frozen=True, slots=True)
class ModelFigures:
    model: str
    engine: str
    answered: int
    latency: tuple[float | None, ...]  # at QUANTILES, seconds
    first_token: tuple[float | None, ...]  # at QUANTILES, seconds; None without streamed answers
    generated_tokens: int
    errors: int  # of the model, whichever engine


def quantile(q: float, buckets: list[tuple[float, float]]) -> float | None:
    """The q-quantile of a histogram given as cumulative (upper bound, count) pairs ending with
    +Inf, as Prometheus's histogram_quantile computes it: linear within the bucket the rank falls
    in, the highest finite bound when it falls in +Inf; None with no observation."""
    if not buckets or buckets[-1][1] == 0:
        return None
    rank = q * buckets[-1][1]
    lower, below = 0.0, 0.0
    for upper, count in buckets:
        if count >= rank:
            if upper == float("inf"):
                return lower
            return lower + (upper - lower) * ((rank - below) / (count - below) if count > below else 1.0)
        lower, below = upper, count
    return lower


def _samples(metric):
    return [s for family in metric.collect() for s in family.samples]


def _buckets(metric, keys: tuple[str, ...]) -> dict[tuple[str, ...], list[tuple[float, float]]]:
    """Cumulative buckets per value of `keys`, added up over the metric's other labels."""
    out: dict[tuple[str, ...], dict[float, float]] = {}
    for s in _samples(metric):
        if s.name.endswith("_bucket"):
            per = out.setdefault(tuple(s.labels[k] for k in keys), {})
            bound = float(s.labels["le"])
            per[bound] = per.get(bound, 0.0) + s.value
    return {k: sorted(v.items()) for k, v in out.items()}


@dataclass(slots=True)
class Answer:
    """A completion of a served model on its way (v1.py fills it in as the answer goes), and what
    it adds to the metrics once answered."""

    model: str
    base: str  # the base model whose engines answer it
    stream: bool
    started: float  # time.perf_counter() at the request's arrival
    engine: str = ""  # the replica that answered, once one took it
    seconds: float = 0.0
    first_token_s: float | None = None
    prompt_tokens: int = 0
    generated_tokens: int = 0
    answered: bool = False
    forwarded: bool = False  # sent on to an engine (past the key's limits and every check)
    status: int = 0  # the engine's HTTP status, once it answered
    canary: str | None = None  # the side of a canary rollout that answers: candidate or champion

    def finished(self, usage: tuple[int, int]) -> Answer:
        """Answered now, with the engine's (prompt, generated) token counts."""
        self.answered = True
        self.seconds = time.perf_counter() - self.started
        self.prompt_tokens, self.generated_tokens = usage
        return self

"""Prometheus text counters: requests by route and status, time spent waiting on vLLM, and
failed authentications by door (with those refused for too many failures).

The gateway's front counts every request (front.py): two dictionary updates per request. The
rarer counters are prometheus_client's, in a registry of this gateway's own.
"""

from __future__ import annotations

import threading
from collections import defaultdict

from prometheus_client import CollectorRegistry, Counter, generate_latest


class Metrics:
    def __init__(self) -> None:
        self._lock = threading.Lock()
        self.requests: dict[tuple[str, int], int] = defaultdict(int)
        self.upstream_sum = 0.0
        self.upstream_count = 0
        self.upstream_errors: dict[str, int] = defaultdict(int)
        self.registry = CollectorRegistry()
        self.auth_failures = Counter("airlock_gateway_auth_failures", "Failed authentications (a wrong, "
                                     "unknown, revoked or expired key; a failed sign-in), by door.", ["door"],
                                     registry=self.registry)
        self.auth_refused = Counter("airlock_gateway_auth_throttled", "Authentications refused with 429 "
                                    "after too many failures from one address or for one key id, by door.",
                                    ["door"], registry=self.registry)

    def count_auth_failure(self, door: str) -> None:
        self.auth_failures.labels(door=door).inc()

    def count_auth_throttled(self, door: str) -> None:
        self.auth_refused.labels(door=door).inc()

    def count_request(self, route: str, status: int) -> None:
        with self._lock:
            self.requests[(route, status)] += 1

    def observe_upstream(self, seconds: float) -> None:
        with self._lock:
            self.upstream_sum += seconds
            self.upstream_count += 1

    def count_upstream_error(self, kind: str) -> None:
        with self._lock:
            self.upstream_errors[kind] += 1

    def render(self) -> str:
        with self._lock:
            requests = sorted(self.requests.items())
            errors = sorted(self.upstream_errors.items())
            total, count = self.upstream_sum, self.upstream_count
        lines = [
            "# HELP airlock_gateway_requests_total Requests the gateway answered, by route and status.",
            "# TYPE airlock_gateway_requests_total counter",
        ]
        lines += [
            f'airlock_gateway_requests_total{{route="{_label(route)}",status="{status}"}} {n}'
            for (route, status), n in requests
        ]
        lines += [
            "# HELP airlock_gateway_upstream_seconds Time from sending a request to vLLM until its "
            "response headers arrive.",
            "# TYPE airlock_gateway_upstream_seconds summary",
            f"airlock_gateway_upstream_seconds_sum {total:.6f}",
            f"airlock_gateway_upstream_seconds_count {count}",
            "# HELP airlock_gateway_upstream_errors_total Requests vLLM could not answer, by kind.",
            "# TYPE airlock_gateway_upstream_errors_total counter",
        ]
        lines += [f'airlock_gateway_upstream_errors_total{{kind="{_label(k)}"}} {n}' for k, n in errors]
        return "\n".join(lines) + "\n" + generate_latest(self.registry).decode()


def _label(value: str) -> str:
    return value.replace("\\", "\\\\").replace('"', '\\"').replace("\n", "\\n")

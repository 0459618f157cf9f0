"""Prometheus text counters: requests by route and status, and time spent waiting on vLLM.

The gateway's front counts every request (front.py): two dictionary updates per request.
"""

from __future__ import annotations

import threading
from collections import defaultdict



class Metrics:
    def __init__(self) -> None:
        self._lock = threading.Lock()
        self.requests: dict[tuple[str, int], int] = defaultdict(int)
        self.upstream_sum = 0.0
        self.upstream_count = 0
        self.upstream_errors: dict[str, int] = defaultdict(int)

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
        return "\n".join(lines) + "\n"


def _label(value: str) -> str:
    return value.replace("\\", "\\\\").replace('"', '\\"').replace("\n", "\\n")

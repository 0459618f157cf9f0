"""Driving `wrk` (the C HTTP load generator, Debian package `wrk`) and reading what it measured.

The serving benchmarks use wrk rather than a Python client: a load generator in Python spends
more CPU per request than the gateway it measures, and on a two-core machine that CPU is taken
from the very processes being timed. Each run gets a generated Lua script (method, body, headers)
whose `done()` prints the totals and, when asked, every latency wrk recorded, so blocks run at
different times can be pooled into one distribution.

wrk "corrects" its latency histogram for coordinated omission: after the run it adds synthetic
samples below every latency longer than twice the average interval between requests. The clients
here are closed loops that compare two targets request by request, so `undo_correction` removes
those samples again; the count that remains must equal the requests wrk completed, which checks it.
"""

from __future__ import annotations

import os
import shutil
import subprocess
from dataclasses import dataclass, field
from pathlib import Path

from bench.stats import percentile

INSTALL_HINT = ("wrk, the HTTP load generator these benchmarks drive, is not installed: run ./install.sh as "
                "root (it installs it with apt-get), or `apt-get install wrk` (Debian/Ubuntu)")
# Longer than any single chat completion here: a request slower than this counts as a timeout.
TIMEOUT = "30s"


class WrkMissing(RuntimeError):
    pass


def wrk_path() -> str:
    path = shutil.which("wrk")
    if path is None:
        raise WrkMissing(INSTALL_HINT)
    return path


def lua_string(text: str) -> str:
    """`text` as a Lua string literal (every byte outside printable ASCII as a decimal escape)."""
    out = []
    for byte in text.encode("utf-8"):
        ch = chr(byte)
        if ch in '"\\':
            out.append("\\" + ch)
        elif 32 <= byte < 127:
            out.append(ch)
        else:
            out.append(f"\\{byte:03d}")
    return '"' + "".join(out) + '"'


_DONE = """
function done(summary, latency, requests)
  local e = summary.errors
  io.write(string.format("wrk-result requests=%d duration_us=%d connect=%d read=%d write=%d status=%d timeout=%d\\n",
    summary.requests, summary.duration, e.connect, e.read, e.write, e.status, e.timeout))
  if HISTOGRAM then
    local parts = {}
    for i = 1, #latency do
      local value, count = latency(i)
      parts[#parts + 1] = string.format("%d:%d", value, count)
    end
    io.write("wrk-latency ", table.concat(parts, " "), "\\n")
  end
end
"""


def lua_script(method: str, headers: dict[str, str], body: str | None = None, *, histogram: bool,
               pause_ms: int = 0) -> str:
    """A wrk script sending the same request on every connection; `done()` prints the results.
    With `pause_ms`, each connection waits that long after an answer before its next request
    (wrk starts a request's clock when it sends it, so the pause is not in its latency)."""
    lines = [f"wrk.method = {lua_string(method)}"]
    if body is not None:
        lines.append(f"wrk.body = {lua_string(body)}")
    lines += [f"wrk.headers[{lua_string(k)}] = {lua_string(v)}" for k, v in headers.items()]
    lines.append(f"HISTOGRAM = {'true' if histogram else 'false'}")
    if pause_ms:
        lines.append(f"function delay() return {int(pause_ms)} end")
    return "\n".join(lines) + "\n" + _DONE


@dataclass
class WrkResult:
    connections: int
    requests: int
    seconds: float
    errors: dict[str, int]
    histogram: dict[int, int] = field(default_factory=dict)  # microseconds -> requests, uncorrected

    @property
    def failed(self) -> int:
        return sum(self.errors.values())

    @property
    def rps(self) -> float:
        return self.requests / self.seconds if self.seconds else 0.0

    def latencies_ms(self) -> list[float]:
        return expand_ms(self.histogram)


def expand_ms(histogram: dict[int, int]) -> list[float]:
    """Every recorded latency, in milliseconds, from a microsecond histogram."""
    return [us / 1000 for us, count in sorted(histogram.items()) for _ in range(count)]


def pooled_ms(results: list[WrkResult], q: float) -> float:
    """The q-th percentile (ms) over every request of several runs."""
    return percentile([x for r in results for x in r.latencies_ms()], q)


def apply_correction(histogram: dict[int, int], interval: int) -> dict[int, int]:
    """wrk's coordinated-omission correction (its stats_correct): for every latency n of at least
    2 * interval, the same count again at n - interval, n - 2 * interval, ... while above interval."""
    out = dict(histogram)
    for value, count in histogram.items():
        if interval > 0 and value >= 2 * interval:
            lower = value - interval
            while lower > interval:
                out[lower] = out.get(lower, 0) + count
                lower -= interval
    return out


def undo_correction(corrected: dict[int, int], interval: int) -> dict[int, int]:
    """wrk's histogram before its coordinated-omission correction.

    Additions only go to smaller values, so from the largest value down, each bin's own count is
    its corrected count minus what the (already recovered) larger bins added to it. Correcting
    the result again must give back exactly what wrk printed, which checks the interval too.
    """
    if interval <= 0:
        return dict(corrected)
    original: dict[int, int] = {}
    top = max(corrected, default=0)
    for value in sorted(corrected, reverse=True):
        added = 0
        if value > interval:
            above = value + interval
            while above <= top:
                added += original.get(above, 0)
                above += interval
        count = corrected[value] - added
        if count < 0:
            raise ValueError(f"wrk histogram is not a corrected one at {value} us (interval {interval} us)")
        if count:
            original[value] = count
    if apply_correction(original, interval) != corrected:
        raise ValueError(f"wrk histogram is not one corrected with an interval of {interval} us")
    return original


def parse_output(text: str, connections: int) -> WrkResult:
    """A WrkResult from wrk's stdout with the `done()` lines of `lua_script`."""
    totals: dict[str, int] | None = None
    corrected: dict[int, int] = {}
    for line in text.splitlines():
        if line.startswith("wrk-result "):
            totals = {k: int(v) for k, v in (item.split("=") for item in line.split()[1:])}
        elif line.startswith("wrk-latency"):
            for item in line.split()[1:]:
                value, count = item.split(":")
                corrected[int(value)] = corrected.get(int(value), 0) + int(count)
    if totals is None:
        raise RuntimeError(f"wrk printed no result line; its output was:\n{text[-2000:]}")
    requests, duration = totals["requests"], totals["duration_us"]
    histogram = {}
    if corrected:
        # wrk's own interval: run time / (completed requests per connection), integer arithmetic.
        per_connection = requests // connections
        histogram = undo_correction(corrected, duration // per_connection if per_connection else 0)
        if sum(histogram.values()) != requests:
            raise RuntimeError(f"wrk's latency histogram holds {sum(histogram.values())} requests after "
                               f"undoing its correction, but it completed {requests}")
    errors = {k: totals[k] for k in ("connect", "read", "write", "status", "timeout")}
    return WrkResult(connections=connections, requests=requests, seconds=duration / 1e6, errors=errors,
                     histogram=histogram)


def run_wrk(url: str, script: Path, *, connections: int, seconds: int, threads: int = 1,
            cpus: set[int] | None = None) -> WrkResult:
    """One wrk run of `seconds` against `url` with `connections` keep-alive connections."""
    cmd = [wrk_path(), f"-t{threads}", f"-c{connections}", f"-d{seconds}s", f"--timeout={TIMEOUT}",
           "-s", str(script), url]
    preexec = (lambda: os.sched_setaffinity(0, cpus)) if cpus else None
    out = subprocess.run(cmd, capture_output=True, text=True, timeout=seconds + 120, preexec_fn=preexec)
    if out.returncode != 0:
        raise RuntimeError(f"wrk exited with code {out.returncode}: {out.stderr[-2000:]}")
    return parse_output(out.stdout, connections)

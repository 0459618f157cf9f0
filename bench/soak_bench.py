"""Benchmark 6: a soak. Many clients, half of them streaming, call a LoRA adapter's alias through
the gateway with the official `openai` client for minutes, and every error is counted.

The client's own retries are off (max_retries=0): a retried 503 would pass unseen, and the point
is to find any. Every so often all clients stop, the machine stays idle for a random 0-10 s, and
they start again together: pooled keep-alive connections (openai client to gateway, gateway to
vLLM) expire on one side and not the other across such gaps, so the first request of each client
after a gap is counted separately. /readyz is polled once a second the whole time.
"""

from __future__ import annotations

import asyncio
import os
import random
import time
from collections import Counter
from dataclasses import dataclass

import httpx
import openai

from airlock.context import Airlock
from bench.handoff_bench import QUESTION, SEEDS, train_candidates
from bench.procs import gateway_trouble
from bench.report import Section, version
from bench.serving import Stack
from bench.stats import percentile

ALIAS = "bench-soak"
CLIENTS = 64
MAX_TOKENS = 16
SECONDS, QUICK_SECONDS = 600.0, 30.0
GAP_EVERY_S, QUICK_GAP_EVERY_S = 60.0, 10.0  # seconds of load between idle gaps
GAP_MAX_S = 10.0
TIMEOUT_S = 120.0  # a request that hangs this long is counted as an error, not waited for


@dataclass
class Outcome:
    stream: bool
    after_gap: int  # n when it is the client's first request after the n-th idle gap, else 0
    seconds: float
    ttft: float | None = None
    error: str | None = None  # its kind: "HTTP 503", or the exception's class
    message: str = ""


def prepare(airlock: Airlock) -> list[str]:
    """While vLLM boots: train (and evaluate, so sign) the one adapter the soak serves."""
    return train_candidates(airlock, SEEDS[:1])


def kind_of(exc: Exception) -> str:
    if isinstance(exc, openai.APIStatusError):
        return f"HTTP {exc.status_code}"
    cause = exc.__cause__ or exc.__context__
    return type(exc).__name__ + (f" ({type(cause).__name__})" if cause is not None else "")


async def one_request(client: openai.AsyncOpenAI, stream: bool, after_gap: int) -> Outcome:
    started = time.perf_counter()
    out = Outcome(stream, after_gap, 0.0)
    # ignore_eos: every request generates MAX_TOKENS tokens, so each is the same work for vLLM.
    ask = {"model": ALIAS, "messages": QUESTION, "max_tokens": MAX_TOKENS, "temperature": 0,
           "extra_body": {"ignore_eos": True}}
    try:
        if stream:
            answered = ""
            async for chunk in await client.chat.completions.create(**ask, stream=True):
                answered = chunk.model
                if out.ttft is None and any(c.delta.content for c in chunk.choices):
                    out.ttft = time.perf_counter() - started
            text = out.ttft is not None
        else:
            resp = await client.chat.completions.create(**ask)
            answered, text = resp.model, bool(resp.choices and resp.choices[0].message.content)
        if not text:
            out.error, out.message = "answer without text", f"model {answered}"
        elif answered != ALIAS:  # OpenAI's shape: the name the client asked for
            out.error, out.message = "wrong model", f"answered by {answered!r}, not {ALIAS!r}"
    except Exception as exc:  # noqa: BLE001 - every failure is a finding: count it by kind, keep its message
        out.error, out.message = kind_of(exc), f"{type(exc).__name__}: {exc}"[:400]
    out.seconds = time.perf_counter() - started
    return out


class Gate:
    """Lets the clients run, or holds them all for an idle gap and releases them together."""

    def __init__(self) -> None:
        self.open, self.over, self.gaps, self.in_flight = asyncio.Event(), False, 0, 0
        self.open.set()


async def client_loop(n: int, gate: Gate, stack: Stack, outcomes: list[Outcome]) -> None:
    stream, seen = n % 2 == 1, 0
    # One connection pool per client, as separate applications would have; trust_env=False: no proxy.
    async with openai.AsyncOpenAI(base_url=f"{stack.gateway.url}/v1", api_key=stack.key, max_retries=0,
                                  timeout=TIMEOUT_S,
                                  http_client=openai.DefaultAsyncHttpxClient(trust_env=False)) as client:
        while True:
            await gate.open.wait()
            if gate.over:
                return
            after_gap, seen = (gate.gaps if gate.gaps != seen else 0), gate.gaps
            gate.in_flight += 1
            try:
                outcomes.append(await one_request(client, stream, after_gap))
            finally:
                gate.in_flight -= 1


async def poll_ready(url: str, polls: list[tuple[float, str]], stop: asyncio.Event) -> None:
    """GET /readyz once a second: (seconds into the soak, "" for a 200 or what came instead)."""
    start = time.monotonic()
    async with httpx.AsyncClient(trust_env=False, timeout=5) as http:
        while not stop.is_set():
            tick = time.monotonic()
            try:
                resp = await http.get(f"{url}/readyz")
                polls.append((tick - start, "" if resp.status_code == 200 else f"HTTP {resp.status_code}: {resp.text[:200]}"))
            except httpx.HTTPError as exc:
                polls.append((tick - start, f"{type(exc).__name__}: {exc}"))
            try:
                await asyncio.wait_for(stop.wait(), max(0.0, 1.0 - (time.monotonic() - tick)))
            except TimeoutError:
                pass


async def soak(stack: Stack, clients: int, seconds: float, gap_every: float) -> dict:
    gate, outcomes, polls, stop = Gate(), [], [], asyncio.Event()
    rng = random.Random(0)  # the same gap lengths every run
    poller = asyncio.create_task(poll_ready(stack.gateway.url, polls, stop))
    tasks = [asyncio.create_task(client_loop(n, gate, stack, outcomes)) for n in range(clients)]
    started, idle, gaps = time.monotonic(), 0.0, []

    def loaded() -> float:
        """Seconds of load so far: the idle gaps are left out."""
        return time.monotonic() - started - idle

    next_gap = gap_every
    while next_gap < seconds:
        await asyncio.sleep(next_gap - loaded())
        gate.open.clear()
        while gate.in_flight:  # the requests under way finish first: the gap is truly idle
            await asyncio.sleep(0.05)
        gap = rng.uniform(0, GAP_MAX_S)
        await asyncio.sleep(gap)
        idle += gap
        gate.gaps += 1
        gaps.append((loaded(), gap))
        gate.open.set()
        next_gap += gap_every
    await asyncio.sleep(max(0.0, seconds - loaded()))
    gate.over = True
    gate.open.clear()
    while gate.in_flight:
        await asyncio.sleep(0.05)
    load_seconds = loaded()
    gate.open.set()
    await asyncio.gather(*tasks)
    stop.set()
    await poller
    return {"outcomes": outcomes, "polls": polls, "gaps": gaps, "load_seconds": load_seconds, "idle": idle}


def warm(stack: Stack, adapter: str) -> None:
    """Promote and serve the adapter under the alias (unprotected, as the quickstart's), and answer
    one request through it untimed."""
    from airlock.access.holders import OPERATOR
    from airlock.promotion.policy import set_policy
    from airlock.workflow.gatekeeper import propose

    settings = stack.airlock.settings
    set_policy(stack.airlock, ALIAS, {"approvals": 0}, actor="bench", holder=OPERATOR)
    propose(stack.airlock, model_id=adapter, alias=ALIAS, run_id=None,
            base_path=settings.models_dir / settings.serve_base_model, actor="bench")
    with openai.OpenAI(base_url=f"{stack.gateway.url}/v1", api_key=stack.key, max_retries=0, timeout=TIMEOUT_S,
                       http_client=openai.DefaultHttpxClient(trust_env=False)) as client:
        client.chat.completions.create(model=ALIAS, messages=QUESTION, max_tokens=MAX_TOKENS)


def spread_ms(values: list[float]) -> list[str]:
    """p50, p95, p99 in milliseconds (dashes for an empty sample)."""
    return [f"{1000 * percentile(values, q):.0f}" if values else "-" for q in (50, 95, 99)]


def run(stack: Stack, quick: bool, seconds: float | None = None, clients: int = CLIENTS) -> Section:
    began, load0 = time.perf_counter(), os.getloadavg()[0]
    seconds = seconds or (QUICK_SECONDS if quick else SECONDS)
    gap_every = QUICK_GAP_EVERY_S if quick else GAP_EVERY_S
    adapter = stack.prepared[0]
    warm(stack, adapter)
    wall0, client0, gateway0 = time.perf_counter(), time.process_time(), stack.gateway.cpu_seconds
    m = asyncio.run(soak(stack, clients, seconds, gap_every))
    wall = time.perf_counter() - wall0
    cores = ((time.process_time() - client0) / wall, (stack.gateway.cpu_seconds - gateway0) / wall)
    done, polls = m["outcomes"], m["polls"]
    failed = [o for o in done if o.error]
    burst = [o for o in done if o.after_gap]
    bad_polls = [(t, what) for t, what in polls if what]
    section = Section(
        title="6. Soak: many clients through the official openai client",
        what=(f"{clients} concurrent clients (half streaming) send chat completions for {seconds:.0f} s of load "
              f"through the gateway to vLLM, under an alias serving a LoRA adapter trained by the quickstart "
              f"workflow (max_tokens {MAX_TOKENS}, ignore_eos). Load generator: the official `openai` Python client "
              f"{version('openai')} (AsyncOpenAI, one httpx pool per client, max_retries=0 so every error is "
              f"counted). Every {gap_every:.0f} s of load all clients pause for a random 0-{GAP_MAX_S:.0f} s and "
              "resume together; each client's first request after a gap is counted apart. /readyz is polled once "
              "a second. Target: no errors, and /readyz always 200."))
    burst_failed = sum(1 for o in burst if o.error)
    section.add("errors, all requests", "-", f"{len(failed)} of {len(done)}", "-", "0", not failed and bool(done))
    section.add("errors, first requests after an idle gap", "-", f"{burst_failed} of {len(burst)}", "-", "0",
                burst_failed == 0)
    section.add("/readyz answers other than 200", "-", f"{len(bad_polls)} of {len(polls)}", "-", "0",
                not bad_polls and bool(polls))
    ok = [o for o in done if not o.error]
    section.add("completed requests per second (of load)", "-", f"{len(ok) / m['load_seconds']:.1f}", "-",
                "(information)", None)
    rows = [[label, len(x), *spread_ms([o.seconds for o in x])] for label, x in (
        ("non-streaming, to the whole answer", [o for o in ok if not o.stream]),
        ("streaming, to the end of the stream", [o for o in ok if o.stream]))]
    rows.append(["streaming, to the first token", sum(1 for o in ok if o.stream),
                 *spread_ms([o.ttft for o in ok if o.stream])])
    section.details.append(("Latency of the successful requests (ms)", ("", "requests", "p50", "p95", "p99"), rows))
    if failed:
        kinds = Counter((o.error, o.stream, bool(o.after_gap)) for o in failed)
        first = {}
        for o in failed:
            first.setdefault(o.error, o.message)
        section.details.append(("Errors by kind", ("kind", "streaming", "after a gap", "count", "first message"),
                                [[k, "yes" if s else "no", "yes" if g else "no", n, first[k]]
                                 for (k, s, g), n in sorted(kinds.items())]))
    if bad_polls:
        section.details.append(("/readyz answers other than 200", ("seconds into the soak", "answer"),
                                [[f"{t:.0f}", what] for t, what in bad_polls[:20]]))
    gap_rows = []
    for i, (at, gap) in enumerate(m["gaps"]):
        first_after = [o for o in done if o.after_gap == i + 1]
        gap_rows.append([i + 1, f"{at:.0f}", f"{gap:.1f}", len(first_after), sum(1 for o in first_after if o.error)])
    section.details.append(("Idle gaps", ("#", "after s of load", "idle s", "first requests after it", "errors in them"),
                            gap_rows))
    section.notes += [
        (f"{len(done)} requests finished ({len(ok)} succeeded) in {m['load_seconds']:.0f} s of load plus "
         f"{m['idle']:.0f} s of idle gaps; requests per second count the load only."),
        (f"This machine has {os.cpu_count()} cores: the Python client, the gateway, vLLM's API server and its "
         "engine all compete for them, so the latencies include queueing behind the load generator itself. A soak "
         f"measures errors under sustained load, not peak speed. Averaged over the soak, gaps included, the "
         f"clients used {cores[0]:.2f} of a core and the gateway {cores[1]:.2f}."),
        ("vLLM listens on loopback TCP here (the shared serving stack of benchmarks 3 and 4); production uses the "
         "engine's Unix socket. Idle keep-alive connections are closed by the server after its timeout on either."),
        f"The gateway's own count of what went wrong: {gateway_trouble(stack.gateway.url) or 'nothing but 2xx'}.",
    ]
    section.seconds, section.load = time.perf_counter() - began, (load0, os.getloadavg()[0])
    return section

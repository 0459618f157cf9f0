"""Benchmark 15: a canary's roll-back, from the breach to the candidate's last request.

On the shared serving stack (bench.serving: vLLM and the gateway as its own process), the
hand-off's two trained candidates are promoted to the alias in turn (an unprotected policy, as the
quickstart's), so one is the champion and the other holds a promotion record. Each repetition
starts a canary of the other at 50%, one client asking the alias in turn through the gateway,
until each side has answered MIN_REQUESTS times; then the candidate's adapter is taken out of vLLM,
so its requests really fail (503: not loaded). The gateway's own judgement rolls it back.

Measured from the client's side: the time from the answer that made the breach (the candidate's
last failure) to (a) the canary's row saying rolled_back, polled every 5 ms by another thread, and
(b) the next answer, which no longer carries the canary header; and the requests the candidate
took after the breaching one (none expected). Baseline: an admin's abort (`abort_canary`, what
`airlock serve canary abort` and /api call), from the call to its row, then the next answer.
"""

from __future__ import annotations

import os
import threading
import time
from collections import Counter

import httpx

from airlock.states import CanaryState
from bench.handoff_bench import ALIAS, QUESTION
from bench.report import Section
from bench.serving import Stack
from bench.stats import median

TARGET_S = 5.0
MIN_REQUESTS = 10
MAX_ERROR_RATE = 0.1


def ask(client: httpx.Client) -> str:
    """The side that answered the alias (its x-airlock-canary header), "none" without a canary, or
    the error's status."""
    resp = client.post("/v1/chat/completions", json={"model": ALIAS, "messages": QUESTION, "max_tokens": 4,
                                                     "temperature": 0})
    if resp.status_code != 200:
        return f"HTTP {resp.status_code}"
    return resp.headers.get("x-airlock-canary", "none")


def promote_both(stack: Stack, candidates: list[str]) -> None:
    """Each candidate promoted to the alias in turn: the last is the champion, the other holds its
    promotion record."""
    from airlock.access.holders import OPERATOR
    from airlock.promotion.policy import set_policy
    from airlock.workflow.gatekeeper import propose

    settings = stack.airlock.settings
    set_policy(stack.airlock, ALIAS, {"approvals": 0}, actor="bench", holder=OPERATOR)
    for model_id in candidates:
        propose(stack.airlock, model_id=model_id, alias=ALIAS, run_id=None,
                base_path=settings.models_dir / settings.serve_base_model, actor="bench")


def start(stack: Stack, candidate: str, client: httpx.Client):
    from airlock.serve.canary import start_canary

    canary = start_canary(stack.airlock, ALIAS, candidate, percent=50.0, window_s=3600.0,
                          max_error_rate=MAX_ERROR_RATE, max_latency_ratio=1000.0, min_requests=MIN_REQUESTS,
                          actor="bench")
    counts: Counter[str] = Counter()
    while min(counts["candidate"], counts["champion"]) < MIN_REQUESTS:
        counts[ask(client)] += 1
    return canary


def watch_row(stack: Stack, canary_id: int, state: CanaryState, seen: dict[str, float],
              stop: threading.Event) -> threading.Thread:
    """A thread noting when the canary's row first says `state`."""
    def poll() -> None:
        while not stop.is_set():
            row = stack.airlock.meta.one("SELECT state FROM canaries WHERE id = ?", (canary_id,))
            if row["state"] == state:
                seen["row"] = time.perf_counter()
                return
            time.sleep(0.005)
    thread = threading.Thread(target=poll, daemon=True)
    thread.start()
    return thread


def one_breach(stack: Stack, client: httpx.Client, candidate: str) -> dict[str, float]:
    canary = start(stack, candidate, client)
    stop, seen = threading.Event(), {}
    watcher = watch_row(stack, canary.id, CanaryState.ROLLED_BACK, seen, stop)
    stack.vllm.unload_adapter(candidate)  # the fault: from here on the candidate's requests fail
    answers: list[tuple[float, str]] = []
    while not answers or answers[-1][1] != "none":
        if len(answers) > 500:
            raise RuntimeError(f"no roll-back after {len(answers)} requests: {Counter(a for _, a in answers)}")
        outcome = ask(client)
        answers.append((time.perf_counter(), outcome))
    watcher.join(timeout=30)
    stop.set()
    if "row" not in seen:
        raise RuntimeError("the canary's row never said rolled_back")
    failures = [at for at, outcome in answers if outcome.startswith("HTTP")]
    breach_at = failures[-1]
    after = sum(1 for at, outcome in answers if at > breach_at and outcome == "candidate")
    return {"to_row": seen["row"] - breach_at, "to_champion": answers[-1][0] - breach_at, "failed": len(failures),
            "candidate_after": after, "requests": len(answers)}


def one_abort(stack: Stack, client: httpx.Client, candidate: str) -> dict[str, float]:
    from airlock.serve.canary import abort_canary

    start(stack, candidate, client)
    called = time.perf_counter()
    abort_canary(stack.airlock, ALIAS, actor="bench")
    recorded = time.perf_counter()
    outcome = ask(client)
    if outcome != "none":
        raise RuntimeError(f"the request after the abort was answered as {outcome}")
    return {"to_row": recorded - called, "to_champion": time.perf_counter() - called}


def run(stack: Stack, quick: bool) -> Section:
    started, load0 = time.perf_counter(), os.getloadavg()[0]
    reps = 3 if quick else 6
    candidates: list[str] = stack.prepared
    promote_both(stack, candidates)
    candidate = candidates[0]  # the champion is the last promoted
    section = Section(
        title="15. Canary: breach to roll-back",
        what=(f"A canary at 50% on the alias (trained candidate against trained champion, both promoted), one client "
              f"asking in turn; once each side has answered {MIN_REQUESTS} times, the candidate's adapter is taken out "
              f"of vLLM, so its requests really fail, and the gateway rolls it back when its failures exceed "
              f"{MAX_ERROR_RATE:.0%}. From the answer that made the breach to the canary's row saying rolled_back "
              "(polled every 5 ms) and to the next answer, the champion's. Baseline: an admin's abort, from the call "
              f"to its row and to the next answer. {reps} of each. Target: under {TARGET_S:.0f} s after the "
              "minimum requests."))
    breaches, aborts = [], []
    with httpx.Client(base_url=stack.gateway.url, headers=stack.headers, trust_env=False, timeout=120) as client:
        for _ in range(reps):
            breaches.append(one_breach(stack, client, candidate))
            aborts.append(one_abort(stack, client, candidate))
    for what, key in (("to the canary's row", "to_row"), ("to the next answer (the champion's)", "to_champion")):
        auto, manual = median([b[key] for b in breaches]), median([a[key] for a in aborts])
        worst = max(b[key] for b in breaches)
        section.add(f"breach {what}, median of {reps} (slowest {1000 * worst:.0f} ms)", f"{1000 * manual:.1f} ms",
                    f"{1000 * auto:.1f} ms", f"{auto / manual:.2f}" if manual else "n/a", f"< {TARGET_S:.0f} s",
                    worst < TARGET_S)
    section.details.append(("Each roll-back", ("#", "requests after the fault", "failed (503)",
                                                "candidate answers after the breach", "to the row (ms)",
                                                "to the next answer (ms)"),
                            [[n + 1, b["requests"], b["failed"], b["candidate_after"], f"{1000 * b['to_row']:.1f}",
                              f"{1000 * b['to_champion']:.1f}"] for n, b in enumerate(breaches)]))
    section.notes += [
        "The roll-back is the gateway's, in memory, on the answer that shows the breach; its row follows from a "
        "thread. The candidate took no request after the breaching one in any repetition"
        if not any(b["candidate_after"] for b in breaches) else
        "The candidate took requests after the breaching one: see the table.",
        "The failed requests are the candidate's own after the fault, up to the breach: with "
        f"{MIN_REQUESTS} answers before it and a {MAX_ERROR_RATE:.0%} limit, two failures cross it.",
    ]
    section.seconds, section.load = time.perf_counter() - started, (load0, os.getloadavg()[0])
    return section

"""Running two training loops step by step in turn, to compare their speed on a noisy machine.

Whole runs interleaved (A B A B) still see the load of other programs change between runs. Here
each loop runs in its own thread and hands a baton to the other after every step, so step k of
one loop and step k of the other run within milliseconds of each other. Only the time a loop
holds the baton counts: from taking it back after step k-1 to offering it after step k, which
is everything its own code does for step k (progress callback included).

Both threads are pinned to the same CPU. Only one of them runs at a time anyway, and on a
machine with other work a thread that settles on the busier core would otherwise be slower for
the whole run, which no amount of interleaving cancels.
"""

from __future__ import annotations

import os
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field


@dataclass
class Side:
    name: str
    steps: int
    step_seconds: list[float] = field(default_factory=list)
    step_tokens: list[int] = field(default_factory=list)
    done: int = 0
    returned: bool = False
    tokens_before: int = 0
    resumed: float | None = None
    error: BaseException | None = None

    @property
    def finished(self) -> bool:
        return self.done >= self.steps or self.error is not None

    @property
    def tokens_per_second(self) -> float:
        return sum(self.step_tokens) / sum(self.step_seconds)


class Baton:
    """The hook each loop calls after every step; it blocks until the other loop has stepped."""

    def __init__(self, a: Side, b: Side) -> None:
        self.sides = (a, b)
        self.holder = a
        self.cond = threading.Condition()

    def other(self, side: Side) -> Side:
        return self.sides[1] if side is self.sides[0] else self.sides[0]

    def after_step(self, side: Side, tokens_so_far: int) -> None:
        now = time.perf_counter()
        if side.resumed is not None:  # step 1 may overlap the other loop's set-up: not counted
            side.step_seconds.append(now - side.resumed)
            side.step_tokens.append(tokens_so_far - side.tokens_before)
        side.tokens_before = tokens_so_far
        other = self.other(side)
        with self.cond:
            side.done += 1
            self.holder = other
            self.cond.notify_all()
            if other.finished:
                # The other loop is saving and cleaning up: let it finish first, so no two
                # set-ups or tear-downs ever run at once.
                self.cond.wait_for(lambda: other.returned)
            else:
                self.cond.wait_for(lambda: self.holder is side or other.finished)
        side.resumed = time.perf_counter()

    def wait_to_start(self, side: Side) -> None:
        """Hold the second loop back until the first has set up and stepped once: loading a
        model is not thread-safe in transformers (global init state), so set-ups never overlap."""
        with self.cond:
            self.cond.wait_for(lambda: self.holder is side or self.other(side).returned)

    def finish(self, side: Side, exc: BaseException | None) -> None:
        with self.cond:
            side.error = exc
            side.returned = True
            self.cond.notify_all()


def shared_cpu() -> int | None:
    """The CPU both loops run on: the last one this process may use (CPU 0 usually takes the
    most interrupts); None where the platform cannot pin threads."""
    if not hasattr(os, "sched_setaffinity"):
        return None
    return max(os.sched_getaffinity(0))


def run_lockstep(a: Side, run_a: Callable[[Callable[[int], None]], object],
                 b: Side, run_b: Callable[[Callable[[int], None]], object]) -> tuple[object, object]:
    """Run `run_a(hook)` and `run_b(hook)` in two threads; each calls hook(tokens) after a step."""
    baton = Baton(a, b)
    results: dict[str, object] = {}
    cpu = shared_cpu()

    def worker(side: Side, fn) -> None:
        error = None
        try:
            if cpu is not None:
                os.sched_setaffinity(0, {cpu})  # 0 is the calling thread here, not the process
            baton.wait_to_start(side)
            results[side.name] = fn(lambda tokens: baton.after_step(side, tokens))
        except BaseException as exc:  # noqa: BLE001 - re-raised in the caller's thread
            error = exc
        finally:
            baton.finish(side, error)

    threads = [threading.Thread(target=worker, args=(s, fn), name=f"lockstep-{s.name}")
               for s, fn in ((a, run_a), (b, run_b))]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    for side in (a, b):
        if side.error is not None:
            raise side.error
    return results[a.name], results[b.name]

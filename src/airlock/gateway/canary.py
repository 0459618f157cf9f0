"""The gateway's part in canary rollouts (serve/canary.py): which side answers each request of an
alias under a canary, both sides' figures, and the roll-back at the first breach.

The roll-back happens here, in memory, on the answer that shows the breach: from the next request
on, every request of the alias goes to the champion, before the row says so (a thread writes it
within milliseconds). Every second the figures of each running canary are written to its row,
and once its window has ended, the verdict: passed (the worker promotes it) or expired.
"""

from __future__ import annotations

import asyncio
import logging
import random

from airlock.gateway.registry import Registry, Snapshot
from airlock.meta import Meta
from airlock.serve.canary import (CANDIDATE, CHAMPION, Arm, Canary, breach, enough_to_promote, record_breach,
                                  record_figures, save_arms)

log = logging.getLogger("airlock.gateway")
WRITE_EVERY_S = 1.0


class CanaryJudge:
    def __init__(self, meta: Meta, registry: Registry) -> None:
        self.meta, self.registry = meta, registry
        self.arms: dict[int, dict[str, Arm]] = {}
        self.rolled_back: set[int] = set()  # here, before the row says so
        self._task: asyncio.Task | None = None
        self._pick = random.Random()

    def route(self, snapshot: Snapshot, alias: str) -> tuple[Canary, str] | None:
        """(the canary, the side that answers) for a request of `alias`, or None when none runs.
        A canary judged against another champion than the alias's (switched meanwhile) is ignored."""
        canary = snapshot.canaries.get(alias)
        row = snapshot.aliases.get(alias)
        if canary is None or canary.id in self.rolled_back or row is None or row["model_id"] != canary.champion_id:
            return None
        return canary, CANDIDATE if self._pick.random() * 100 < canary.percent else CHAMPION

    def figures(self, canary: Canary) -> dict[str, Arm]:
        if canary.id not in self.arms:
            self.arms[canary.id] = canary.arms()  # a restarted gateway goes on from the row's figures
        return self.arms[canary.id]

    def observe(self, canary: Canary, side: str, *, failed: bool, seconds: float | None) -> None:
        """One answer (or failure) of `side`; rolls the candidate back at once on a breach."""
        arms = self.figures(canary)
        arm = arms[side]
        arm.requests += 1
        if failed:
            arm.errors += 1
        elif seconds is not None:
            arm.latencies.append(seconds)
        if canary.id in self.rolled_back or (reason := breach(canary, arms)) is None:
            return
        self.rolled_back.add(canary.id)
        log.warning("canary %s of %s on %r rolled back: %s", canary.id, canary.candidate_id, canary.alias, reason)
        stats = save_arms(arms)  # on the loop: the thread must not read figures still changing
        written = asyncio.get_running_loop().run_in_executor(None, record_breach, self.meta, canary, reason, stats)
        written.add_done_callback(_log_failure)

    def open(self) -> None:
        self._task = asyncio.get_running_loop().create_task(self._write_figures())

    async def close(self) -> None:
        if self._task is not None:
            self._task.cancel()

    async def _write_figures(self) -> None:
        while True:
            await asyncio.sleep(WRITE_EVERY_S)
            try:
                snapshot = await self.registry.current()
                for canary in snapshot.canaries.values():
                    if canary.id in self.rolled_back:
                        continue
                    arms = self.figures(canary)
                    short = enough_to_promote(canary, arms) if canary.due else None
                    await asyncio.to_thread(record_figures, self.meta, canary, save_arms(arms), short)
                for gone in set(self.arms) - {c.id for c in snapshot.canaries.values()}:
                    del self.arms[gone]
            except Exception:  # noqa: BLE001 - the next round tries again; the log says why
                log.exception("writing the canaries' figures failed")


def _log_failure(written: asyncio.Future) -> None:
    if not written.cancelled() and written.exception() is not None:
        log.error("writing a canary's roll-back failed (requests stay on the champion): %s", written.exception())


"""Canary rollouts: a candidate takes part of an alias's requests for a window, against the champion.

An admin starts one for a candidate that holds a valid promotion record for the alias (checked
here, and again by the switch at the end). The candidate is loaded, verified, on every replica of
its base first. The gateway then sends `percent` of the alias's requests to it and the rest to the
champion, and judges the two as the answers come (`judge`): once the candidate has answered
`min_requests`, an error rate above `max_error_rate` rolls it back at once, and once both have,
so does a p95 latency above `max_latency_ratio` times the champion's. When the window ends with
no breach and enough requests on both, the worker promotes the candidate (the same switch as a
promotion: its record verified, a smoke request, the row); with too few requests it expires and
the champion stays. An alias switched by anyone during the window aborts the canary: it judged
another champion.

The figures live in the gateway while it judges and are written to the canary's row every
second, so `airlock serve canary status` and the web UI read them, and a restarted gateway goes on
from them.
"""

from __future__ import annotations

import json
import re
import statistics
from collections import deque
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from typing import Any

from airlock.context import Airlock
from airlock.errors import Conflict, GateRefused, InvalidInput, NotFound
from airlock.meta.db import Meta, now
from airlock.promotion.records import verify_record
from airlock.serve.deploy import check_alias, check_base, load_everywhere, served_base_digest, switch
from airlock.states import CanaryState

CANDIDATE, CHAMPION = "candidate", "champion"
LATENCY_SAMPLES = 2000  # per arm, the newest: enough for a p95, bounded in memory and in the row
MIN_WINDOW_S, MAX_WINDOW_S = 10.0, 7 * 24 * 3600.0
_DURATION = re.compile(r"(\d+(?:\.\d+)?)([smhd]?)")
_UNIT_S = {"": 1, "s": 1, "m": 60, "h": 3600, "d": 86400}


def parse_window(text: str) -> float:
    """'90s', '10m', '2h', '1d' or plain seconds, in seconds."""
    match = _DURATION.fullmatch(text.strip())
    if match is None:
        raise InvalidInput(f"--window {text!r}: a duration such as 90s, 10m, 2h or 1d")
    return float(match.group(1)) * _UNIT_S[match.group(2)]


@dataclass
class Arm:
    """One side's figures over the window: answers, failures (the engine's 5xx, a transport
    failure, an adapter not loaded), and the newest latencies of its answers."""

    requests: int = 0
    errors: int = 0
    latencies: deque[float] = field(default_factory=lambda: deque(maxlen=LATENCY_SAMPLES))

    @property
    def error_rate(self) -> float:
        return self.errors / self.requests if self.requests else 0.0

    @property
    def p95(self) -> float | None:
        if len(self.latencies) < 2:
            return self.latencies[0] if self.latencies else None
        return statistics.quantiles(self.latencies, n=20, method="inclusive")[-1]

    def as_dict(self) -> dict[str, Any]:
        return {"requests": self.requests, "errors": self.errors, "error_rate": self.error_rate, "p95_s": self.p95,
                "latencies": [round(s, 6) for s in self.latencies]}

    @classmethod
    def from_dict(cls, data: dict[str, Any] | None) -> Arm:
        data = data or {}
        return cls(int(data.get("requests", 0)), int(data.get("errors", 0)),
                   deque(data.get("latencies", []), maxlen=LATENCY_SAMPLES))


@dataclass(frozen=True)
class Canary:
    """A canaries row."""

    id: int
    alias: str
    champion_id: str
    candidate_id: str
    promotion_id: int
    percent: float
    window_s: float
    max_error_rate: float
    max_latency_ratio: float
    min_requests: int
    state: CanaryState
    reason: str | None
    stats_json: str | None
    started_by: str
    started_at: str
    ends_at: str
    decided_at: str | None

    @classmethod
    def from_row(cls, row: dict[str, Any]) -> Canary:
        return cls(**{**row, "state": CanaryState(row["state"])})

    def arms(self) -> dict[str, Arm]:
        saved = json.loads(self.stats_json) if self.stats_json else {}
        return {arm: Arm.from_dict(saved.get(arm)) for arm in (CANDIDATE, CHAMPION)}

    @property
    def due(self) -> bool:
        return datetime.fromisoformat(self.ends_at) <= datetime.now(UTC)

    def as_dict(self) -> dict[str, Any]:
        arms = {arm: {k: v for k, v in figures.as_dict().items() if k != "latencies"}
                for arm, figures in self.arms().items()}
        return {k: v for k, v in self.__dict__.items() if k != "stats_json"} | {"arms": arms}


def breach(canary: Canary, arms: dict[str, Arm]) -> str | None:
    """Why the candidate must be rolled back now, or None."""
    candidate, champion, enough = arms[CANDIDATE], arms[CHAMPION], canary.min_requests
    if candidate.requests >= enough and candidate.error_rate > canary.max_error_rate:
        return (f"the candidate failed {candidate.errors} of {candidate.requests} requests ({candidate.error_rate:.1%}), "
                f"above the {canary.max_error_rate:.1%} allowed (the champion: {champion.error_rate:.1%} of "
                f"{champion.requests})")
    if len(candidate.latencies) >= enough and len(champion.latencies) >= enough:
        ratio = candidate.p95 / champion.p95 if champion.p95 else float("inf")
        if ratio > canary.max_latency_ratio:
            return (f"the candidate's p95 latency is {candidate.p95 * 1000:.0f} ms against the champion's "
                    f"{champion.p95 * 1000:.0f} ms ({ratio:.2f}x), above the {canary.max_latency_ratio:g}x allowed")
    return None


def enough_to_promote(canary: Canary, arms: dict[str, Arm]) -> str | None:
    """Why a window that ended without a breach cannot promote, or None."""
    short = [f"the {arm} answered {arms[arm].requests}" for arm in (CANDIDATE, CHAMPION)
             if arms[arm].requests < canary.min_requests]
    if short:
        return f"too few requests to judge: {' and '.join(short)}, of the {canary.min_requests} required each"
    return None


def _open(meta: Meta, alias: str) -> Canary | None:
    row = meta.one("SELECT * FROM canaries WHERE alias = ? AND state IN (?, ?)",
                   (alias, CanaryState.RUNNING, CanaryState.PASSED))
    return Canary.from_row(row) if row else None


def start_canary(airlock: Airlock, alias: str, candidate_id: str, *, percent: float, window_s: float,
                 max_error_rate: float, max_latency_ratio: float, min_requests: int, actor: str) -> Canary:
    """Send `percent` of `alias`'s requests to `candidate_id` for `window_s` (see the module)."""
    check_alias(alias, airlock.settings)
    if not 0 < percent < 100:
        raise InvalidInput(f"--percent {percent:g}: between 0 and 100, both excluded (100 is a promotion)")
    if not MIN_WINDOW_S <= window_s <= MAX_WINDOW_S:
        raise InvalidInput(f"--window {window_s:g} s: from {MIN_WINDOW_S:g} s to {MAX_WINDOW_S / 86400:g} days")
    if not 0 <= max_error_rate < 1:
        raise InvalidInput(f"--max-error-rate {max_error_rate:g}: a fraction from 0 to below 1 (0.05 is 5%)")
    if max_latency_ratio < 1:
        raise InvalidInput(f"--max-latency-ratio {max_latency_ratio:g}: at least 1 (the champion's p95 times this)")
    if min_requests < 1:
        raise InvalidInput(f"--min-requests {min_requests}: at least 1")
    row = airlock.meta.one("SELECT model_id FROM aliases WHERE name = ? AND staged_for IS NULL AND revoked_note IS NULL",
                           (alias,))
    if row is None:
        raise NotFound(f"alias {alias!r} serves no champion: a canary compares a candidate with the champion")
    champion = row["model_id"]
    if candidate_id == champion:
        raise InvalidInput(f"model {candidate_id} is already the champion of {alias!r}")
    if (running := _open(airlock.meta, alias)) is not None:
        raise Conflict(f"alias {alias!r} has a canary of {running.candidate_id} already ({running.state}, until "
                       f"{running.ends_at}); abort it first: airlock serve canary abort {alias}")
    from airlock.models.adapters import get_model

    base = check_base(airlock, get_model(airlock, candidate_id))
    promotion = airlock.meta.one("SELECT id FROM promotions WHERE model_id = ? AND alias = ? AND record_digest IS NOT "
                                 "NULL ORDER BY id DESC LIMIT 1", (candidate_id, alias))
    if promotion is None:
        raise GateRefused(f"model {candidate_id} has no promotion record for {alias!r}: only a candidate the alias's "
                          "approvers promoted may take its traffic, even in part")
    verify_record(airlock, alias, candidate_id, promotion["id"], served_base_digest(airlock, base))
    load_everywhere(airlock, candidate_id, base)  # verified and smoke-tested on every replica first
    started = datetime.now(UTC)
    values = {"alias": alias, "champion_id": champion, "candidate_id": candidate_id, "promotion_id": promotion["id"],
              "percent": percent, "window_s": window_s, "max_error_rate": max_error_rate,
              "max_latency_ratio": max_latency_ratio, "min_requests": min_requests, "state": CanaryState.RUNNING,
              "reason": None, "stats_json": None, "started_by": actor,
              "started_at": started.isoformat(timespec="milliseconds"),
              "ends_at": (started + timedelta(seconds=window_s)).isoformat(timespec="milliseconds"),
              "decided_at": None}
    with airlock.meta.write() as db:
        canary_id = db["canaries"].insert(values).last_pk
    airlock.meta.audit(actor, "canary.started", alias, canary=canary_id, candidate=candidate_id, champion=champion,
                       percent=percent, window_s=window_s)
    return canary_status(airlock, alias)


def canary_status(airlock: Airlock, alias: str) -> Canary:
    """The alias's newest canary, open or decided."""
    row = airlock.meta.one("SELECT * FROM canaries WHERE alias = ? ORDER BY id DESC LIMIT 1", (alias,))
    if row is None:
        raise NotFound(f"alias {alias!r} has had no canary")
    return Canary.from_row(row)


def _decide(meta: Meta, canary: Canary, state: CanaryState, reason: str | None, actor: str,
            stats_json: str | None = None) -> bool:
    """Move an open canary to `state`; False if it was decided meanwhile (another process)."""
    with meta.write() as db:
        changed = db.execute("UPDATE canaries SET state = ?, reason = ?, decided_at = ?, stats_json = "
                             "COALESCE(?, stats_json) WHERE id = ? AND state IN (?, ?)",
                             (state, reason, now(), stats_json, canary.id, CanaryState.RUNNING,
                              CanaryState.PASSED)).rowcount
    if changed:
        meta.audit(actor, f"canary.{state}", canary.alias, canary=canary.id, candidate=canary.candidate_id,
                   reason=reason)
    return bool(changed)


def abort_canary(airlock: Airlock, alias: str, *, actor: str) -> Canary:
    canary = _open(airlock.meta, alias)
    if canary is None:
        raise NotFound(f"alias {alias!r} has no canary running")
    _decide(airlock.meta, canary, CanaryState.ABORTED, f"aborted by {actor}", actor)
    return canary_status(airlock, alias)


def abort_canaries_of(airlock: Airlock, model_id: str, reason: str, *, actor: str) -> None:
    """Stop every open canary whose candidate or champion is `model_id` (a revocation)."""
    for row in airlock.meta.query("SELECT * FROM canaries WHERE (candidate_id = ? OR champion_id = ?) AND state IN "
                                  "(?, ?)", (model_id, model_id, CanaryState.RUNNING, CanaryState.PASSED)):
        _decide(airlock.meta, Canary.from_row(row), CanaryState.ABORTED, reason, actor)


def record_breach(meta: Meta, canary: Canary, reason: str, stats_json: str) -> bool:
    """The gateway's roll-back, written down (it stopped sending requests to the candidate first)."""
    return _decide(meta, canary, CanaryState.ROLLED_BACK, reason, "gateway", stats_json)


def record_figures(meta: Meta, canary: Canary, stats_json: str, short: str | None) -> None:
    """The gateway's figures so far; once the window has ended, its verdict: expired when `short`
    (too few requests, enough_to_promote), else passed."""
    if canary.due and short is not None:
        _decide(meta, canary, CanaryState.EXPIRED, short, "gateway", stats_json)
        return
    state = CanaryState.PASSED if canary.due else CanaryState.RUNNING
    with meta.write() as db:
        db.execute("UPDATE canaries SET state = ?, stats_json = ? WHERE id = ? AND state = ?",
                   (state, stats_json, canary.id, CanaryState.RUNNING))


def save_arms(arms: dict[str, Arm]) -> str:
    return json.dumps({arm: figures.as_dict() for arm, figures in arms.items()})


def promote_passed(airlock: Airlock) -> list[Canary]:
    """The worker's part: each canary whose window passed becomes the alias's champion, through
    the same switch as any promotion (the record verified again); an alias switched meanwhile
    aborts it instead."""
    done = []
    for row in airlock.meta.query("SELECT * FROM canaries WHERE state = ?", (CanaryState.PASSED,)):
        canary = Canary.from_row(row)
        current = airlock.meta.one("SELECT model_id FROM aliases WHERE name = ? AND staged_for IS NULL",
                                   (canary.alias,))
        if current is None or current["model_id"] != canary.champion_id:
            _decide(airlock.meta, canary, CanaryState.ABORTED, "the alias was switched during the canary: it judged "
                    "another champion", "worker")
            continue
        try:
            switch(airlock, canary.alias, canary.candidate_id, canary.promotion_id, actor="canary",
                   event="canary promoted")
        except Exception as exc:  # noqa: BLE001 - any refusal keeps the champion, and says why
            _decide(airlock.meta, canary, CanaryState.ROLLED_BACK, f"the promotion at the window's end failed: {exc}",
                    "worker")
            continue
        _decide(airlock.meta, canary, CanaryState.PROMOTED, None, "worker")
        done.append(canary)
    return done


def running_canaries(meta: Meta) -> dict[str, Canary]:
    """alias -> its running canary (the gateway's registry reads these)."""
    return {row["alias"]: Canary.from_row(row)
            for row in meta.query("SELECT * FROM canaries WHERE state = ?", (CanaryState.RUNNING,))}

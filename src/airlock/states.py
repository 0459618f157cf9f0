"""The states a run, a stage of a run and a promotion request go through, named once.

Each is a `StrEnum`: a member equals its string, so a status read back from SQLite compares
equal to it, and it is written to SQLite, JSON and templates as that string. The sets below
are the groups of states the code asks about (finished? may it still be cancelled?), so a
question about a state is answered the same way everywhere.
"""

from __future__ import annotations

from collections.abc import Collection
from enum import StrEnum


class RunState(StrEnum):
    """A workflow run's state (docs/workflows.md), in the order a run goes through them."""

    QUEUED = "queued"            # waiting for the worker; also where a preempted or requeued run goes back
    CLAIMED = "claimed"          # a worker took it and is starting it
    RUNNING = "running"
    SUCCEEDED = "succeeded"
    FAILED = "failed"            # a stage failed, its time limit was reached, or it could never start here
    CANCELLED = "cancelled"
    INTERRUPTED = "interrupted"  # its worker went away more often than allowed; `airlock runs resume` tries again


class StageState(StrEnum):
    """A stage's state within its run."""

    PENDING = "pending"          # not started yet (again, after a preemption or a resume)
    RUNNING = "running"
    SUCCEEDED = "succeeded"      # also a batch stage skipped because its cached outputs were reused
    FAILED = "failed"
    CANCELLED = "cancelled"
    INTERRUPTED = "interrupted"
    NOT_RUN = "not-run"          # an earlier stage failed or the run was stopped before this one started


class CancelOutcome(StrEnum):
    """What a cancel request did: a queued run is cancelled at once; a running one only asked to
    stop, which it does at its next step boundary, after a checkpoint (its state stays running)."""

    CANCELLED = "cancelled"
    CANCELLING = "cancelling"


class RequestState(StrEnum):
    """A promotion request's state (docs/promotion.md draws them)."""
    PENDING = "pending"      # waiting for approvals
    APPROVED = "approved"    # the approvals are complete; the alias switched
    REJECTED = "rejected"    # one approver said no; a new run makes a new request
    VOIDED = "voided"        # a newer candidate for the alias, a policy change or a revocation replaced it


# A run in one of these states never changes again unless it is resumed.
RUN_FINISHED = frozenset({RunState.SUCCEEDED, RunState.FAILED, RunState.CANCELLED, RunState.INTERRUPTED})
# A run a worker holds: cancelling it asks the worker to stop it.
RUN_ACTIVE = frozenset({RunState.CLAIMED, RunState.RUNNING})
# A run `airlock runs resume` queues again: one that stopped before it succeeded.
RUN_RESUMABLE = frozenset({RunState.CANCELLED, RunState.FAILED, RunState.INTERRUPTED})
# A stage in one of these states is done for this attempt of its run.
STAGE_FINISHED = frozenset({StageState.SUCCEEDED, StageState.FAILED, StageState.NOT_RUN, StageState.CANCELLED,
                            StageState.INTERRUPTED})


def placeholders(states: Collection[str]) -> str:
    """`?, ?` for an SQL `IN (...)` over `states`, whose values go in as parameters."""
    return ", ".join("?" for _ in states)


class CanaryState(StrEnum):
    """A canary rollout's state (docs/serving.md)."""
    RUNNING = "running"          # part of the alias's requests go to the candidate
    PASSED = "passed"            # the window ended with no breach and enough requests: promotion next
    PROMOTED = "promoted"        # the alias now serves the candidate to every request
    ROLLED_BACK = "rolled_back"  # a breach: every request back on the champion at once
    EXPIRED = "expired"          # the window ended with too few requests to judge: the champion stays
    ABORTED = "aborted"          # an admin stopped it, or the alias changed under it

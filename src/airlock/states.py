"""The states of the things that change state, as types, in one place."""

from __future__ import annotations

from enum import StrEnum


class RequestState(StrEnum):
    """A promotion request's state (docs/promotion.md draws them)."""
    PENDING = "pending"      # waiting for approvals
    APPROVED = "approved"    # the approvals are complete; the alias switched
    REJECTED = "rejected"    # one approver said no; a new run makes a new request
    VOIDED = "voided"        # a newer candidate for the alias, a policy change or a revocation replaced it

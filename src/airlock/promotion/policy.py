"""Promotion policies: what a candidate needs before an alias serves it, one per alias, set by admins.

A policy is versioned: every change is a new row with its own digest (sha256 of the canonical
policy), and a request, an approval and a promotion record each name the digest they were made
under, so a change voids what was pending under the old one. The eval set is pinned by digest
when the policy is set, so an upload under the same name later does not change the test.

A workflow can only make a policy stricter (`stricter_of`), never weaker.
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass
from typing import Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError

from airlock.context import Airlock
from airlock.datasets.service import Reader, get_dataset
from airlock.datasets.sharing import shared_with
from airlock.errors import IntegrityFailure, InvalidInput, NotFound
from airlock.meta.db import now
from airlock.trust.root import canonical_json

Metric = Literal["exact_match", "contains", "loss"]
MAX_APPROVALS = 10


class Policy(BaseModel):
    """The rules of one alias. `approvals: 0` makes the alias unprotected: a development setting."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    eval_set: str | None = None  # @OWNER/NAME as the admin named it, for people
    eval_set_digest: str | None = None  # what is really used
    min_exact_match: float = Field(0.0, ge=0.0, le=1.0)
    approvals: int = Field(0, ge=0, le=MAX_APPROVALS)
    better_than_base: bool = True
    better_than_serving: bool = True
    metric: Metric = "exact_match"
    margin: float = Field(0.0, ge=0.0, le=1.0)
    signed_approvals: bool = False
    admins_may_approve: bool = False

    @property
    def protected(self) -> bool:
        return self.approvals > 0


@dataclass(frozen=True)
class PolicyRow:
    alias: str
    version: int
    policy: Policy
    digest: str
    set_by: str
    set_at: str

    def view(self) -> dict:
        return {"alias": self.alias, "version": self.version, "digest": self.digest, "set_by": self.set_by,
                "set_at": self.set_at, "protected": self.policy.protected, **self.policy.model_dump()}


def policy_digest(alias: str, policy: Policy) -> str:
    body = canonical_json({"alias": alias, "policy": policy.model_dump()})
    return "sha256:" + hashlib.sha256(body).hexdigest()


def _row(row: dict) -> PolicyRow:
    """A stored policy, once its rules still hash to its digest: a policy edited in the database
    (fewer approvals, say) would otherwise satisfy a record made under the stricter one."""
    try:
        policy = Policy(**json.loads(row["policy_json"]))
    except (ValueError, TypeError) as exc:
        raise IntegrityFailure(f"policy version {row['version']} of {row['alias']!r} is unreadable: {exc}") from None
    if policy_digest(row["alias"], policy) != row["digest"]:
        raise IntegrityFailure(f"policy version {row['version']} of {row['alias']!r} does not hash to its digest: "
                               "it was edited in the database")
    return PolicyRow(alias=row["alias"], version=row["version"], policy=policy, digest=row["digest"],
                     set_by=row["set_by"], set_at=row["set_at"])


def policy_for(airlock: Airlock, alias: str) -> PolicyRow | None:
    """The alias's current policy, or None where no admin has set one."""
    row = airlock.meta.one("SELECT * FROM gate_policies WHERE alias = ? ORDER BY version DESC LIMIT 1", (alias,))
    return _row(row) if row else None


def policy_version(airlock: Airlock, alias: str, version: int) -> PolicyRow | None:
    row = airlock.meta.one("SELECT * FROM gate_policies WHERE alias = ? AND version = ?", (alias, version))
    return _row(row) if row else None


def require_policy(airlock: Airlock, alias: str) -> PolicyRow:
    found = policy_for(airlock, alias)
    if found is None:
        raise NotFound(f"alias {alias!r} has no promotion policy, so nothing is served under it: an admin sets one "
                       f"with `airlock gate policy set {alias} --eval-set DATASET --approvals 2` (or, for "
                       f"development only, makes it unprotected with `--approvals 0`)")
    return found


def _eval_set(airlock: Airlock, ref: str, reader: Reader) -> tuple[str, str]:
    """(@OWNER/NAME, digest) of an eval set the admin holds and has shared with no one: a policy's
    test that a trainer could read is a test a trainer could train on."""
    row = get_dataset(airlock, ref, reader=Reader(reader.holder))  # the admin's own namespace only
    found = airlock.meta.one("SELECT id FROM datasets WHERE owner = ? AND digest = ?", (row["owner"], row["digest"]))
    if grantees := shared_with(airlock, found["id"]):
        raise InvalidInput(f"--eval-set {ref!r} is shared with {', '.join(grantees)}: a policy's eval set must be "
                           "readable by admins and approvers only, so nobody trains on the test; unshare it or "
                           "upload the eval set again under a name of its own")
    return f"@{row['owner']}/{row['name']}", row["digest"]


def set_policy(airlock: Airlock, alias: str, fields: dict, *, actor: str, holder: str) -> PolicyRow:
    """A new version of `alias`'s policy from `fields` (the changes; the rest is kept from the
    current version, or the defaults); pending requests of the alias are voided."""
    from airlock.promotion.requests import void_pending  # requests name policies; policies void requests

    current = policy_for(airlock, alias)
    merged = {**(current.policy.model_dump() if current else {}), **fields}
    if "eval_set" in fields:
        merged["eval_set"], merged["eval_set_digest"] = (
            _eval_set(airlock, fields["eval_set"], Reader(holder)) if fields["eval_set"] else (None, None))
    try:
        policy = Policy(**merged)
    except ValidationError as exc:
        problems = [f"{'.'.join(str(p) for p in e['loc'])}: {e['msg']}" for e in exc.errors()]
        raise InvalidInput(f"policy of alias {alias!r}: " + "; ".join(problems), problems=problems) from None
    if policy.protected and not policy.eval_set_digest:
        raise InvalidInput(f"policy of alias {alias!r}: approvals {policy.approvals} need an eval set of the "
                           "policy's own (--eval-set), so approvers judge every candidate on one test")
    digest = policy_digest(alias, policy)
    if current is not None and current.digest == digest:
        return current
    version = (current.version + 1) if current else 1
    with airlock.meta.write() as db:
        db["gate_policies"].insert({"alias": alias, "version": version, "policy_json": json.dumps(policy.model_dump()),
                                    "digest": digest, "set_by": actor, "set_at": now()})
    airlock.meta.audit(actor, "gate.policy_set", alias, version=version, digest=digest, policy=policy.model_dump())
    void_pending(airlock, alias, f"the policy of {alias!r} changed (version {version})", actor=actor)
    return policy_version(airlock, alias, version)  # type: ignore[return-value]


def stricter_of(policy: Policy, workflow: dict) -> tuple[Policy, list[str]]:
    """The policy made stricter by a workflow's gate parameters, and a note for each parameter
    that would have made it weaker (ignored: the policy's value applies)."""
    notes, merged = [], policy.model_dump()
    wanted = workflow.get("min_exact_match")
    if wanted is not None:
        if wanted > policy.min_exact_match:
            merged["min_exact_match"] = wanted
        elif wanted < policy.min_exact_match:
            notes.append(f"min_exact_match {wanted:g} is weaker than the policy's {policy.min_exact_match:g}, "
                         "which applies")
    for flag in ("better_than_base", "better_than_serving"):
        if workflow.get(flag) is True:
            merged[flag] = True
        elif workflow.get(flag) is False and merged[flag]:
            notes.append(f"{flag}: false is weaker than the policy, which requires it")
    if workflow.get("margin") is not None:
        merged["margin"] = max(policy.margin, workflow["margin"])
    return Policy(**merged), notes

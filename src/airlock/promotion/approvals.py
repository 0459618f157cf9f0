"""Approvals and rejections of promotion requests, by people other than the candidate's author.

The rules, each enforced here and nowhere else:
- only keys that may approve (approvers; admins only where the policy says so) decide;
- the run's author never decides on its own candidate, whatever its role or key;
- N approvals means N distinct holders: a person with two keys counts once;
- an approval is bound to the request's alias, manifest digest, policy digest and evaluation
  digest; with signed approvals it also carries an Ed25519 signature over exactly those, by a
  key of the pinned trust root's `model` role (each such key counts once, too);
- one rejection ends the request.
"""

from __future__ import annotations

import base64
import binascii
import json
from dataclasses import dataclass
from typing import Any

from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from airlock.access.holders import holder_of_key
from airlock.access.roles import APPROVES, SETS_POLICIES, may
from airlock.context import Airlock
from airlock.errors import Conflict, Forbidden, IntegrityFailure, InvalidInput
from airlock.meta.db import now
from airlock.promotion.policy import Policy, policy_for, policy_version
from airlock.promotion.requests import RequestRow, approvals_of, get_request, reject
from airlock.states import RequestState
from airlock.trust.ed25519 import verify
from airlock.trust.keyfiles import signing_key_id
from airlock.trust.pinned import load_pinned, trust_dir
from airlock.trust.root import Root, canonical_json, pae

APPROVAL_TYPE = "application/vnd.airlock.approval+json"
APPROVE, REJECT = "approve", "reject"


@dataclass(frozen=True)
class Approver:
    """The key deciding: its id and holder, whether its role may approve, and whether it is an
    admin's (which counts only where the policy lets admins approve)."""

    key_id: str
    holder: str
    may_approve: bool
    is_admin: bool
    actor: str


def approver_from_key(key: dict, actor: str) -> Approver:
    """The Approver an API key row is: its holder, and what its role may do (asked by permission)."""
    return Approver(key_id=key["id"], holder=holder_of_key(key),
                    may_approve=may(key, APPROVES), is_admin=may(key, SETS_POLICIES), actor=actor)


def bound_of(request: RequestRow | dict) -> dict[str, Any]:
    """What an approval of `request` vouches for, and nothing else."""
    return {"request": request["id"], "alias": request["alias"], "model_id": request["model_id"],
            "manifest_digest": request["manifest_digest"], "policy_digest": request["policy_digest"],
            "evaluation_digest": request["evaluation_digest"]}


def approval_message(bound: dict) -> bytes:
    return pae(APPROVAL_TYPE, canonical_json(bound))


def sign_approval(key: Ed25519PrivateKey, bound: dict) -> dict[str, str]:
    """The signature an approver's `model` key makes over a request's digests (done where the
    key file is: the CLI), as {"keyid", "sig"}."""
    return {"keyid": signing_key_id(key), "sig": base64.b64encode(key.sign(approval_message(bound))).decode()}


def check_signature(root: Root, bound: dict, signature: Any) -> str:
    """The key id of a valid `model`-role signature over `bound`; IntegrityFailure naming why not."""
    if not isinstance(signature, dict) or set(signature) != {"keyid", "sig"}:
        raise IntegrityFailure("the approval's signature must be {keyid, sig}")
    keyid = signature["keyid"]
    if keyid not in root.roles["model"].keyids or keyid not in root.keys:
        raise IntegrityFailure(f"key {keyid} is not a key of the trust root's model role")
    try:
        raw = base64.b64decode(signature["sig"], validate=True)
    except (TypeError, ValueError, binascii.Error):
        raise IntegrityFailure(f"the signature of key {keyid} is not base64") from None
    if not verify(root.keys[keyid], raw, approval_message(bound)):
        raise IntegrityFailure(f"the signature of key {keyid} does not verify over this request's digests "
                               "(signed for another candidate, alias, policy or evaluation?)")
    return keyid


def pinned_root(airlock: Airlock) -> Root:
    try:
        return load_pinned(trust_dir(airlock.settings))
    except (FileNotFoundError, IntegrityFailure) as exc:
        raise IntegrityFailure(f"signed approvals need the appliance's pinned trust root: {exc}") from None


def _policy_of(airlock: Airlock, request: RequestRow) -> Policy:
    found = policy_version(airlock, request["alias"], request["policy_version"])
    if found is None or found.digest != request["policy_digest"]:
        raise IntegrityFailure(f"request {request['id']} names policy version {request['policy_version']} of "
                               f"{request['alias']!r}, which does not match its digest")
    return found.policy


def _check_may_decide(airlock: Airlock, approver: Approver, request: RequestRow, policy: Policy) -> None:
    if not approver.may_approve:
        raise Forbidden(f"API key {approver.key_id} may not approve or reject promotions: that takes a key whose "
                        "role has 'models:approve' (an approver's)")
    if approver.holder == request["author"] or approver.key_id == request["author_key"]:
        raise Forbidden(f"{approver.holder} is the author of request {request['id']} (run {request['run_id']}): "
                        "a candidate is approved or rejected by people other than its author")
    if approver.is_admin and not policy.admins_may_approve:
        raise Forbidden(f"the policy of {request['alias']!r} counts approvers' keys only, not admins' "
                        "(an admin may allow it: `airlock gate policy set ALIAS --admins-may-approve`)")
    if request["state"] != RequestState.PENDING:
        raise Conflict(f"request {request['id']} is {request['state']}"
                       + (f" ({request['reason']})" if request["reason"] else "") + "; nothing to decide")
    current = policy_for(airlock, request["alias"])
    if current is None or current.digest != request["policy_digest"]:
        raise Conflict(f"the policy of {request['alias']!r} changed since request {request['id']} was made; "
                       "the request is void")
    if any(a["holder"] == approver.holder for a in approvals_of(airlock, request["id"])):
        raise Conflict(f"{approver.holder} already decided on request {request['id']}: "
                       "one person counts once, whichever key they use")


def decide(airlock: Airlock, approver: Approver, request_id: int | str, verdict: str, *, comment: str = "",
           signature: dict | None = None) -> RequestRow:
    """Record one person's approval or rejection; returns the request as it stands after."""
    request = get_request(airlock, request_id)
    policy = _policy_of(airlock, request)
    _check_may_decide(airlock, approver, request, policy)
    bound = bound_of(request)
    if verdict == REJECT and not comment.strip():
        raise InvalidInput("a rejection needs a reason (--reason): the author reads it")
    if verdict == APPROVE and policy.signed_approvals:
        if signature is None:
            raise InvalidInput(f"the policy of {request['alias']!r} asks for signed approvals: approve with "
                               "`airlock gate approve REQUEST --key FILE` (a key of the trust root's model role)")
        keyid = check_signature(pinned_root(airlock), bound, signature)
        if any(json.loads(a["signature_json"] or "{}").get("keyid") == keyid
               for a in approvals_of(airlock, request["id"])):
            raise Conflict(f"model key {keyid} already signed an approval of request {request['id']}")
    with airlock.meta.write() as db:
        db["approvals"].insert({"request_id": request["id"], "key_id": approver.key_id, "holder": approver.holder,
                                "verdict": verdict, "comment": comment.strip() or None,
                                "bound_json": json.dumps(bound, sort_keys=True),
                                "signature_json": json.dumps(signature) if signature else None, "at": now()})
    airlock.meta.audit(approver.actor, f"gate.{verdict}", str(request["id"]), holder=approver.holder,
                       model_id=request["model_id"], alias=request["alias"], comment=comment.strip() or None)
    if verdict == REJECT:
        reject(airlock, request["id"], f"rejected by {approver.holder}: {comment.strip()}", actor=approver.actor)
    return get_request(airlock, request["id"])


def approval_problems(policy: Policy, request: dict, approvals: list[dict], root: Root | None) -> list[str]:
    """Why `approvals` do not satisfy `policy` for `request`; empty: they do. Used when a request
    completes and again whenever a promotion record is checked before serving."""
    bound, problems, holders, signers = bound_of(request), [], set(), set()
    for a in approvals:
        if a.get("verdict", APPROVE) != APPROVE:
            continue
        if a["holder"] == request["author"]:
            problems.append(f"an approval by the author {a['holder']} does not count")
            continue
        if a["bound"] != bound:
            problems.append(f"the approval by {a['holder']} is bound to another candidate, policy or evaluation")
            continue
        if policy.signed_approvals:
            try:
                signers.add(check_signature(root, bound, a.get("signature")) if root else "")
            except IntegrityFailure as exc:
                problems.append(f"the approval by {a['holder']}: {exc.message}")
                continue
        holders.add(a["holder"])
    if len(holders) < policy.approvals:
        problems.append(f"{len(holders)} approval(s) by distinct people, the policy asks {policy.approvals}")
    if policy.signed_approvals and len(signers - {""}) < policy.approvals:
        problems.append(f"{len(signers - {''})} approval(s) signed by distinct model keys, the policy asks "
                        f"{policy.approvals}")
    return problems


def recorded_approvals(airlock: Airlock, request_id: int) -> list[dict]:
    """The approvals of a request as a promotion record carries them."""
    return [{"holder": a["holder"], "key_id": a["key_id"], "at": a["at"], "comment": a["comment"],
             "verdict": a["verdict"], "bound": json.loads(a["bound_json"]),
             "signature": json.loads(a["signature_json"]) if a["signature_json"] else None}
            for a in approvals_of(airlock, request_id) if a["verdict"] == APPROVE]

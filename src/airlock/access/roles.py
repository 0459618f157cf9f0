"""Roles and the permissions each carries. A key has exactly one role; least privilege first.

This table is the one place that says what a role may do: the rest of the code asks
`has_permission(role, ...)` and never compares a role by name (tests/test_role_names.py keeps it
so), so a new role, or a role that may do more, is a change here and in docs/security.md only.

`approver` decides on promotion requests (docs/promotion.md): it may read what it is asked to
approve and revoke what turned out bad, never train or administer.
"""

from __future__ import annotations

from airlock.errors import Forbidden, InvalidInput

INFERENCE = "inference"
ROLES = ("inference", "trainer", "approver", "admin")
DEFAULT_ROLE = INFERENCE

# Permissions that widen another one rather than open a door of their own:
READS_ALL_DATASETS = "datasets:read-all"  # every owner's datasets, not only its holder's and those shared with it
READS_ALL_RUNS = "runs:read-all"  # every run in the queue, not only its own
MANAGES_ALL_RUNS = "runs:manage-all"  # cancel, reprioritise and resume every run, not only its own
ANY_PRIORITY = "runs:any-priority"  # priorities above `high`, up to the queue's bound
SEES_INTERNALS = "errors:internals"  # errors and specs with host paths and tracebacks, unredacted
WEB_SIGN_IN = "web:sign-in"  # signs in to the web UI with its key
APPROVES = "models:approve"  # approves or rejects promotion requests, calls every staging name
SETS_POLICIES = "gate:policy"  # sets aliases' promotion policies; its approvals count only where a policy says so
REVOKES = "models:revoke"  # revokes an adapter for good and rolls aliases back

_READ = {"datasets:read", "runs:read", "models:read"}
PERMISSIONS: dict[str, frozenset[str]] = {
    "inference": frozenset({INFERENCE}),
    "trainer": frozenset({INFERENCE, *_READ, "datasets:write", "runs:write", WEB_SIGN_IN}),
    "approver": frozenset({INFERENCE, *_READ, APPROVES, REVOKES, READS_ALL_DATASETS, READS_ALL_RUNS,
                           WEB_SIGN_IN}),
    "admin": frozenset({INFERENCE, *_READ, "datasets:write", "runs:write", APPROVES, SETS_POLICIES, REVOKES,
                        "models:verify", "aliases:read", "aliases:write", "keys:admin", "audit:read",
                        "metrics", "datasets:share", READS_ALL_DATASETS, READS_ALL_RUNS, MANAGES_ALL_RUNS,
                        ANY_PRIORITY, SEES_INTERNALS, WEB_SIGN_IN}),
}


def check_role(role: str) -> str:
    if role not in ROLES:
        raise InvalidInput(f"unknown role {role!r}: choose one of {', '.join(ROLES)}")
    return role


def has_permission(role: str, permission: str) -> bool:
    return permission in PERMISSIONS.get(role, frozenset())


def may(key: dict, permission: str) -> bool:
    """Whether a key row's role carries `permission`."""
    return has_permission(key["role"], permission)


def roles_with(permission: str) -> tuple[str, ...]:
    """The roles that carry `permission`, least privileged first: for messages that name them."""
    return tuple(role for role in ROLES if has_permission(role, permission))


def require_permission(key: dict, permission: str) -> None:
    """Forbidden, naming the missing permission, unless the key's role carries it."""
    if not may(key, permission):
        raise Forbidden(
            f"API key {key['id']} has the role {key['role']!r}, which lacks the permission "
            f"{permission!r}; an admin can create a key with a role that has it "
            f"(`airlock apikey create --role ...`)"
        )

"""Roles and the permissions each carries. A key has exactly one role; least privilege first.

`approver` is here so the promotion gate can grow approvals without a new key format: it may
read what it is asked to approve, never train or administer.
"""

from __future__ import annotations

from airlock.errors import Forbidden, InvalidInput

INFERENCE = "inference"
ROLES = ("inference", "trainer", "approver", "admin")
DEFAULT_ROLE = INFERENCE

_READ = {"datasets:read", "runs:read", "models:read"}
PERMISSIONS: dict[str, frozenset[str]] = {
    "inference": frozenset({INFERENCE}),
    "trainer": frozenset({INFERENCE, *_READ, "datasets:write", "runs:write"}),
    "approver": frozenset({INFERENCE, *_READ, "models:approve"}),
    "admin": frozenset({INFERENCE, *_READ, "datasets:write", "runs:write", "models:approve",
                        "models:verify", "aliases:read", "aliases:write", "keys:admin", "audit:read",
                        "metrics", "datasets:share"}),
}


def check_role(role: str) -> str:
    if role not in ROLES:
        raise InvalidInput(f"unknown role {role!r}: choose one of {', '.join(ROLES)}")
    return role


def has_permission(role: str, permission: str) -> bool:
    return permission in PERMISSIONS.get(role, frozenset())


def require_permission(key: dict, permission: str) -> None:
    """Forbidden, naming the missing permission, unless the key's role carries it."""
    if not has_permission(key["role"], permission):
        raise Forbidden(
            f"API key {key['id']} has the role {key['role']!r}, which lacks the permission "
            f"{permission!r}; an admin can create a key with a role that has it "
            f"(`airlock apikey create --role ...`)"
        )

"""Holders: the person behind API keys. Two keys of one person share one holder, and what a person
owns (datasets first) lives in that holder's namespace, so a second key reaches the first key's
datasets and no other person's.

A holder is a short lower-case name (`alice`, `ml-team.anna`). A key created without one holds a
namespace of its own, `key-<id>`; that prefix is reserved so no one can name themselves into
another key's namespace. `operator` is the namespace of what the operator adds on the host with
the CLI; an admin may give the operator's own key that holder to reach those datasets over HTTP.
"""

from __future__ import annotations

import re

from airlock.errors import InvalidInput

OPERATOR = "operator"
OWN_PREFIX = "key-"
_HOLDER_RE = re.compile(r"^[a-z0-9][a-z0-9._-]{0,63}$")


def own_holder(key_id: str) -> str:
    """The namespace of a key made without a holder: its own."""
    return f"{OWN_PREFIX}{key_id}"


def holder_of_key(key: dict) -> str:
    """The person behind a key row: its holder, or the key's own namespace for a key without one."""
    return key.get("holder") or own_holder(key["id"])


def check_holder(value: str | None, field: str = "--holder", *, reserved_ok: bool = False) -> str:
    """A holder name, lower-cased; InvalidInput naming `field` otherwise. Lower case only, so
    'Alice' and 'alice' can never be two people. `key-...` is refused unless `reserved_ok` (when
    it names an existing key's own namespace, as an owner filter or a share does)."""
    holder = (value or "").strip().lower()
    if not _HOLDER_RE.match(holder):
        raise InvalidInput(f"{field} {value!r}: a holder is 1 to 64 of a-z, 0-9, '.', '_' and '-', "
                           "starting with a letter or digit")
    if holder.startswith(OWN_PREFIX) and not reserved_ok:
        raise InvalidInput(f"{field} {value!r}: names starting with {OWN_PREFIX!r} are the own namespaces "
                           "of keys made without a holder; choose another name")
    return holder

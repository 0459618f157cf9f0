"""The admin's pages: the API keys (list, create with the secret shown once, revoke) and the audit
log (filtered, newest first, page by page) with the state of its hash chain. Keys are listed by
the same `list_keys` as /api/keys and `airlock apikey list`; the log by the same `list_rows` and
`verify` as `airlock audit`. The page's script makes every change through /api/keys."""

from __future__ import annotations

import json
from datetime import UTC, datetime
from typing import Any
from urllib.parse import urlencode

from fastapi import APIRouter, Depends, Request
from fastapi.responses import HTMLResponse

from airlock.access.roles import DEFAULT_ROLE, ROLES
from airlock.errors import InvalidInput
from airlock.gateway.deps import AirlockDep, Key
from airlock.web.pages import page, render

router = APIRouter(include_in_schema=False)

# One line per role for the form's choice; the permissions themselves are in access/roles.py.
ROLE_DESCRIPTIONS = {
    "inference": "calls /v1 only (chat, completions, models), optionally only some models; cannot sign in here",
    "trainer": "uploads datasets, queues and manages its own runs, reads models; signs in to this UI",
    "approver": "reads datasets, every run and the models, to sign off promotions; changes nothing",
    "admin": "everything: keys, aliases, model verification and this audit log",
}
AUDIT_PAGE_SIZE = 50


def _key_state(key: dict[str, Any], at: datetime) -> str:
    if key["revoked_at"]:
        return "revoked"
    if key["expires_at"] and datetime.fromisoformat(key["expires_at"]) <= at:
        return "expired"
    return "live"


@router.get("/keys", response_class=HTMLResponse)
def keys_page(request: Request, airlock: AirlockDep, key: Key = Depends(page("keys:admin"))) -> HTMLResponse:
    from airlock.access.keys import list_keys

    at = datetime.now(UTC)
    # Newest first: the key just made, or the one to revoke, is usually a recent one.
    keys = [{**k, "state": _key_state(k, at)} for k in reversed(list_keys(airlock.meta))]
    roles = [(role, ROLE_DESCRIPTIONS.get(role, "")) for role in ROLES]
    return render(request, "keys.html", key, keys=keys, roles=roles, default_role=DEFAULT_ROLE)


@router.get("/audit", response_class=HTMLResponse)
def audit_page(request: Request, airlock: AirlockDep, actor: str = "", action: str = "", subject: str = "", since: str = "",
               until: str = "", before: str = "", key: Key = Depends(page("audit:read"))) -> HTMLResponse:
    from airlock.meta.audit import list_rows, verify_anchored

    meta = airlock.meta
    filters = {"actor": actor.strip(), "action": action.strip(), "subject": subject.strip(),
               "since": since.strip(), "until": until.strip()}
    report = verify_anchored(meta)  # the whole chain and its anchors, whatever the filters show
    tampered = {p.id for p in report.problems if p.id is not None}
    rows, error, older = [], None, None
    try:
        before_id = _row_id(before)
        # One row more than a page tells whether an older page exists.
        found = list_rows(meta, limit=AUDIT_PAGE_SIZE + 1, before_id=before_id,
                          **{name: value or None for name, value in filters.items()})
    except InvalidInput as exc:
        error = exc.message
    else:
        rows = found[::-1][:AUDIT_PAGE_SIZE]  # newest first
        for row in rows:
            row["detail_text"] = json.dumps(row["detail"], sort_keys=True, ensure_ascii=False)
        if len(found) > AUDIT_PAGE_SIZE:
            older = _audit_link(filters, before=rows[-1]["id"])
    return render(request, "audit.html", key, status=400 if error else 200, rows=rows, filters=filters,
                  report=report, tampered=tampered, error=error, older=older,
                  newest=_audit_link(filters) if before else None, page_size=AUDIT_PAGE_SIZE)


def _row_id(before: str) -> int | None:
    """The `before` of a next-page link: an audit row's id."""
    if not before.strip():
        return None
    if not before.strip().isdigit():
        raise InvalidInput(f"before {before!r}: expected the id of an audit row, such as 120")
    return int(before)


def _audit_link(filters: dict[str, str], **more: Any) -> str:
    """/audit with the same filters, so paging keeps them."""
    query = urlencode({**{k: v for k, v in filters.items() if v}, **more})
    return "/audit" + (f"?{query}" if query else "")

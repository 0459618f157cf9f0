"""Least privilege on the control API: every route names its permission, roles carry only theirs,
and revoked or expired keys are refused, all in OpenAI's error format."""

from __future__ import annotations

import re
from datetime import UTC, datetime, timedelta

import httpx
import pytest

from airlock.meta import open_meta

# Every /api route and the permission it needs. A route added without an entry here fails
# `test_every_api_route_is_listed`, so none can slip in unguarded.
ROUTES = {
    ("POST", "/api/datasets"): "datasets:write",
    ("GET", "/api/datasets"): "datasets:read",
    ("GET", "/api/datasets/{name_or_digest}"): "datasets:read",
    ("POST", "/api/runs"): "runs:write",
    ("GET", "/api/runs"): "runs:read",
    ("GET", "/api/runs/{run_id}"): "runs:read",
    ("POST", "/api/runs/{run_id}/cancel"): "runs:write",
    ("PUT", "/api/runs/{run_id}/priority"): "runs:write",
    ("POST", "/api/runs/{run_id}/resume"): "runs:write",
    ("GET", "/api/runs/{run_id}/events"): "runs:read",
    ("POST", "/api/keys"): "keys:admin",
    ("GET", "/api/keys"): "keys:admin",
    ("DELETE", "/api/keys/{key_id}"): "keys:admin",
    ("PUT", "/api/aliases/{alias}"): "aliases:write",
    ("GET", "/api/aliases"): "aliases:read",
    ("GET", "/api/models"): "models:read",
    ("POST", "/api/models/{model_id}/verify"): "models:verify",
    ("POST", "/api/datasets/share"): "datasets:share",
    ("POST", "/api/datasets/unshare"): "datasets:share",
    ("PUT", "/api/gate/policies/{alias}"): "gate:policy",
    ("GET", "/api/gate/policies/{alias}"): "models:read",
    ("GET", "/api/gate/requests"): "models:read",
    ("GET", "/api/gate/requests/{request_id}"): "models:read",
    ("POST", "/api/gate/requests/{request_id}/approve"): "models:approve",
    ("POST", "/api/gate/requests/{request_id}/reject"): "models:approve",
    ("POST", "/api/models/{model_id}/revoke"): "models:revoke",
    ("POST", "/api/aliases/{alias}/rollback"): "aliases:write",
    ("GET", "/api/aliases/{alias}/history"): "models:read",
    ("POST", "/api/aliases/{alias}/canary"): "aliases:write",
    ("GET", "/api/aliases/{alias}/canary"): "aliases:read",
    ("POST", "/api/aliases/{alias}/canary/abort"): "aliases:write",
}


def call(gw, method: str, path: str, key: str, **kw) -> httpx.Response:
    return httpx.request(method, f"{gw.url}{path}", headers={"Authorization": f"Bearer {key}"}, timeout=60, **kw)


def concrete(path: str) -> str:
    return re.sub(r"\{[^}]+\}", "x", path)


def assert_error(resp: httpx.Response, status: int, type_: str, code: str) -> str:
    assert resp.status_code == status, resp.text
    error = resp.json()["error"]
    assert set(error) == {"message", "type", "param", "code"}
    assert (error["type"], error["code"]) == (type_, code)
    return error["message"]


def api_routes(gw) -> set[tuple[str, str]]:
    found = set()
    for route in gw.app.routes:
        path = getattr(route, "path", "").replace(":path}", "}")
        if path.startswith("/api"):
            found |= {(m, path) for m in route.methods - {"HEAD"}}
    return found


def test_every_api_route_is_listed(offline_gateway):
    assert api_routes(offline_gateway) == set(ROUTES)


@pytest.mark.parametrize(("method", "path"), sorted(ROUTES))
def test_an_inference_key_is_refused_on_every_api_route(offline_gateway, method, path):
    gw = offline_gateway
    resp = call(gw, method, concrete(path), gw.new_key("inference"), json={})
    message = assert_error(resp, 403, "permission_error", "insufficient_permissions")
    assert repr(ROUTES[(method, path)]) in message and "'inference'" in message


def test_a_trainer_cannot_manage_keys_or_switch_aliases(offline_gateway):
    gw = offline_gateway
    trainer = gw.new_key("trainer")
    refused = {
        ("POST", "/api/keys", "keys:admin"): {"name": "mine", "role": "admin"},
        ("GET", "/api/keys", "keys:admin"): None,
        ("DELETE", f"/api/keys/{gw.key.split('-')[1]}", "keys:admin"): None,
        ("PUT", "/api/aliases/support", "aliases:write"): {"model_id": "adp-000000000000"},
        ("POST", "/api/models/adp-000000000000/verify", "models:verify"): None,
    }
    for (method, path, permission), body in refused.items():
        message = assert_error(call(gw, method, path, trainer, json=body), 403, "permission_error",
                               "insufficient_permissions")
        assert repr(permission) in message
    assert call(gw, "GET", "/api/keys", gw.key).status_code == 200  # the admin's key still works
    assert [k["role"] for k in call(gw, "GET", "/api/keys", gw.key).json()] == ["admin", "trainer"]
    refusals = gw.meta.query("SELECT actor FROM audit WHERE action = 'request.refused'")
    assert {r["actor"] for r in refusals} == {f"key:{trainer.split('-')[1]}"}


def test_revoked_and_expired_keys_are_refused(offline_gateway):
    gw = offline_gateway
    revoked, expired = gw.new_key("admin"), gw.new_key("admin", expires="1h")
    for secret in (revoked, expired):
        assert call(gw, "GET", "/api/runs", secret).status_code == 200
    assert call(gw, "DELETE", f"/api/keys/{revoked.split('-')[1]}", gw.key).status_code == 200
    # An hour is long for a test: the expiry is moved into the past, as time would.
    past = (datetime.now(UTC) - timedelta(seconds=1)).isoformat(timespec="seconds")
    with open_meta(gw.settings.db_path).write() as db:
        db.execute("UPDATE api_keys SET expires_at = ? WHERE id = ?", [past, expired.split("-")[1]])
    assert "revoked" in assert_error(call(gw, "GET", "/api/runs", revoked), 401, "authentication_error",
                                     "invalid_api_key")
    assert "expired" in assert_error(call(gw, "GET", "/api/runs", expired), 401, "authentication_error",
                                     "invalid_api_key")


def test_an_oversized_upload_is_refused_at_once_and_stores_nothing(small_upload_gateway):
    gw = small_upload_gateway
    trainer = gw.new_key("trainer")
    line = b'{"prompt": "' + b"x" * 200 + b'", "completion": "y"}\n'
    headers = {"Authorization": f"Bearer {trainer}", "Content-Type": "application/x-ndjson"}
    url = f"{gw.url}/api/datasets?name=big"
    declared = httpx.post(url, content=line * 20, headers=headers, timeout=60)
    message = assert_error(declared, 413, "invalid_request_error", "request_too_large")
    assert "AIRLOCK_MAX_UPLOAD_BYTES" in message
    # Without a Content-Length (chunked), the running count refuses it.
    streamed = httpx.post(url, content=iter([line] * 20), headers=headers, timeout=60)
    assert_error(streamed, 413, "invalid_request_error", "request_too_large")
    assert call(gw, "GET", "/api/datasets", trainer).json() == []
    assert not [p for p in gw.settings.store_dir.rglob("*") if p.is_file()]
    # Under the limit, the same kind of body is taken.
    assert httpx.post(url, content=line * 4, headers=headers, timeout=60).status_code == 201
    assert [d["name"] for d in call(gw, "GET", "/api/datasets", trainer).json()] == ["big"]
    assert not list((gw.settings.home / "uploads").iterdir())
    assert gw.meta.one("SELECT COUNT(*) AS n FROM audit WHERE action = 'dataset.add'")["n"] == 1

"""Putting a promoted adapter behind an alias: verify again, hot-load, smoke-test, switch.

The switch is one row update, made only after a smoke request through the new adapter worked.
The previous adapter stays loaded in vLLM, so requests that resolved the alias before the switch
finish on the adapter they started with.
"""

from __future__ import annotations

import re
import shutil
import time
from pathlib import Path

import httpx

from airlock.context import Airlock
from airlock.errors import GateRefused, InvalidInput, NotReady
from airlock.gate.promote import latest_promotion
from airlock.meta.db import now
from airlock.models.adapters import get_model
from airlock.models.signing import verify_model
from airlock.serve.vllm_server import VllmServer, http

ALIAS_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,63}$")


def check_alias(alias: str) -> str:
    if not ALIAS_RE.match(alias or ""):
        raise InvalidInput(f"alias {alias!r} is not valid: use letters, digits, '.', '_' and '-' (at most 64)")
    return alias


def materialize(airlock: Airlock, model_id: str, manifest: dict) -> Path:
    """A verified on-disk copy of the adapter for vLLM to read. Re-verified on every deploy."""
    dest = airlock.settings.serving_dir / model_id
    staging = dest.with_name(dest.name + ".tmp")
    shutil.rmtree(staging, ignore_errors=True)
    for rel, entry in manifest["files"].items():
        airlock.store.get_file(entry["sha256"], staging / rel)
    shutil.rmtree(dest, ignore_errors=True)
    staging.rename(dest)
    return dest


def smoke_test(vllm: VllmServer, lora_name: str) -> None:
    body = {"model": lora_name, "messages": [{"role": "user", "content": "Hello"}], "max_tokens": 4}
    try:
        resp = http().post(f"{vllm.url}/v1/chat/completions", json=body, timeout=60)
    except httpx.HTTPError as exc:
        raise NotReady(f"smoke request through {lora_name} failed: {exc}") from exc
    if resp.status_code != 200 or not resp.json().get("choices"):
        raise NotReady(f"smoke request through {lora_name} failed: HTTP {resp.status_code} {resp.text[:300]}")


def wait_for_vllm(airlock: Airlock) -> VllmServer:
    """vLLM, once ready. While an appliance on this home is still starting it, wait for it;
    with no appliance running, fail at once and say how to start one."""
    from airlock.appliance import running_pid

    vllm = VllmServer(airlock.settings)
    deadline = time.monotonic() + airlock.settings.vllm_startup_timeout_s
    while not vllm.is_healthy():
        if running_pid(airlock.settings) is None:
            raise NotReady(f"vLLM is not running at {vllm.url}: start the appliance with `airlock up`")
        if time.monotonic() > deadline:
            raise NotReady(f"vLLM at {vllm.url} did not become ready in {airlock.settings.vllm_startup_timeout_s:.0f} s")
        time.sleep(0.5)
    return vllm


def deploy(airlock: Airlock, model_id: str, alias: str, actor: str = "worker") -> dict:
    check_alias(alias)
    model = get_model(airlock, model_id)
    if latest_promotion(airlock, model_id) is None:
        raise GateRefused(f"model {model_id} has not passed the promotion gate; it cannot be served")
    served = airlock.settings.serve_base_model
    if model["base_model"] != served:
        raise InvalidInput(f"model {model_id} adapts {model['base_model']!r}, but vLLM here serves {served!r}")
    vllm = wait_for_vllm(airlock)

    manifest = verify_model(airlock, model_id)  # again, right before load
    lora_name = model_id  # vLLM knows each adapter by its content-derived id
    if lora_name not in vllm.loaded_adapters():
        vllm.load_adapter(lora_name, materialize(airlock, model_id, manifest))
    smoke_test(vllm, lora_name)

    with airlock.meta.write() as db:
        db["aliases"].upsert({"name": alias, "model_id": model_id, "lora_name": lora_name,
                              "base_model": served, "updated_at": now()}, pk="name")
        db["alias_history"].insert({"alias": alias, "model_id": model_id, "lora_name": lora_name, "at": now()})
    airlock.meta.audit(actor, "alias.switched", alias, model_id=model_id)
    return {"alias": alias, "model_id": model_id, "lora_name": lora_name}


def list_aliases(airlock: Airlock) -> list[dict]:
    return airlock.meta.query("SELECT * FROM aliases ORDER BY name")

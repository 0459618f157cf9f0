"""Putting a promoted adapter behind an alias: verify again, hot-load, smoke-test, switch.

The switch is one row update, made only after a smoke request through the new adapter worked.
The previous adapter stays loaded in vLLM, so requests that resolved the alias before the switch
finish on the adapter they started with.
"""

from __future__ import annotations

import re
import time

from airlock.context import Airlock
from airlock.errors import GateRefused, InvalidInput, NotReady
from airlock.promotion.gate import latest_promotion
from airlock.home import appliance_pid
from airlock.meta.db import now
from airlock.models.adapters import get_model
from airlock.models.catalog import base_model_names
from airlock.serve.engine import EngineClient, engine_client
from airlock.serve.serving_copy import load_verified

ALIAS_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,63}$")


def check_alias(alias: str, settings=None) -> str:
    if not ALIAS_RE.match(alias or ""):
        raise InvalidInput(f"alias {alias!r} is not valid: use letters, digits, '.', '_' and '-' (at most 64)")
    if settings is not None:
        bases = {settings.serve_base_model} | base_model_names(settings)
        if alias in bases:
            raise InvalidInput(f"alias {alias!r} is the name of a base model; choose another alias "
                               "(a base model's name always means the base model itself)")
    return alias


def wait_for_engine(airlock: Airlock) -> EngineClient:
    """The engine, once healthy. While an appliance on this home (or an engine service) is still
    starting it, wait; with nothing running, fail at once and say how to start one."""
    settings = airlock.settings
    client = engine_client(settings)
    deadline = time.monotonic() + settings.vllm_startup_timeout_s
    while not client.is_healthy():
        starting = appliance_pid(settings) is not None or settings.engine_secret_path.exists()
        if not starting:
            raise NotReady(f"the engine is not running ({client.where}): start the appliance with `airlock up`")
        if time.monotonic() > deadline:
            raise NotReady(f"the engine did not become ready in {settings.vllm_startup_timeout_s:.0f} s")
        time.sleep(0.5)
    return client


def deploy(airlock: Airlock, model_id: str, alias: str, actor: str = "worker") -> dict:
    check_alias(alias, airlock.settings)
    model = get_model(airlock, model_id)
    if latest_promotion(airlock, model_id) is None:
        raise GateRefused(f"model {model_id} has not passed the promotion gate; it cannot be served")
    served = airlock.settings.serve_base_model
    if model["base_model"] != served:
        raise InvalidInput(f"model {model_id} adapts {model['base_model']!r}, but vLLM here serves {served!r}")
    client = wait_for_engine(airlock)

    lora_name = model_id  # vLLM knows each adapter by its content-derived id
    if lora_name not in client.loaded_adapters():
        load_verified(airlock, client, model_id)  # verifies the signed manifest again, right before load
    client.smoke_test(lora_name)

    with airlock.meta.write() as db:
        db["aliases"].upsert({"name": alias, "model_id": model_id, "lora_name": lora_name,
                              "base_model": served, "updated_at": now()}, pk="name")
        db["alias_history"].insert({"alias": alias, "model_id": model_id, "lora_name": lora_name, "at": now()})
    airlock.meta.audit(actor, "alias.switched", alias, model_id=model_id)
    return {"alias": alias, "model_id": model_id, "lora_name": lora_name}


def list_aliases(airlock: Airlock) -> list[dict]:
    return airlock.meta.query("SELECT * FROM aliases ORDER BY name")

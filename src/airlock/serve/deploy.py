"""Putting an adapter behind a name: a staging name at once, a production alias with a record only.

A candidate that passed its policy's evaluation is served under its staging name
(`ALIAS.candidate-N`), callable by its author, approvers and admins. A production alias switches
to an adapter only with a valid promotion record for that alias (promotion/records.py), checked
right here before the load, and the switch is one row update made after a smoke request through
the adapter worked. The previous adapter stays loaded in vLLM, so requests that resolved the
alias before the switch finish on the adapter they started with.
"""

from __future__ import annotations

import re
import time
from concurrent.futures import ThreadPoolExecutor

from airlock.config import Settings
from airlock.context import Airlock
from airlock.errors import GateRefused, InvalidInput, NotReady
from airlock.home import appliance_pid
from airlock.meta.db import now
from airlock.models.adapters import get_model
from airlock.models.catalog import base_model_names, digest_cache, model_digest, resolve_base_model
from airlock.promotion.records import verify_record
from airlock.promotion.requests import STAGING_SUFFIX, RequestRow
from airlock.serve.engine import EngineClient, engine_client
from airlock.serve.fleet import fleet, replica_settings
from airlock.serve.serving_copy import verified_copy

ALIAS_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,63}$")


def check_alias(alias: str, settings=None) -> str:
    if not ALIAS_RE.match(alias or ""):
        raise InvalidInput(f"alias {alias!r} is not valid: use letters, digits, '.', '_' and '-' (at most 64)")
    if re.search(re.escape(STAGING_SUFFIX) + r"\d+$", alias):
        raise InvalidInput(f"alias {alias!r} ends like a staging name ({STAGING_SUFFIX}N), which the gate gives "
                           "candidates; choose another alias")
    if settings is not None:
        bases = {settings.serve_base_model} | base_model_names(settings)
        if alias in bases:
            raise InvalidInput(f"alias {alias!r} is the name of a base model; choose another alias "
                               "(a base model's name always means the base model itself)")
    return alias


def wait_for_engine(airlock: Airlock, settings: Settings | None = None) -> EngineClient:
    """The engine (of `settings`: one replica's, by default the first), once healthy. While an
    appliance on this home (or an engine service) is still starting it, wait; with nothing
    running, fail at once and say how to start one."""
    settings = settings or airlock.settings
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


def served_base_digest(airlock: Airlock, base: str | None = None) -> str:
    """The digest of a base model the engines serve (by default the first engine's), from its
    files (cached by size and mtime)."""
    settings = airlock.settings
    return model_digest(resolve_base_model(settings, base or settings.serve_base_model), cache=digest_cache(settings))


def check_base(airlock: Airlock, model: dict) -> str:
    """The served base model `model` adapts, matched by digest (never by name)."""
    if model["revoked_at"]:
        raise GateRefused(f"model {model['id']} was revoked at {model['revoked_at']} ({model['revoked_reason']}); "
                          "a revoked adapter is never served again")
    served = sorted({r.model for r in fleet(airlock.settings)})
    for base in served:
        if model["base_digest"] == served_base_digest(airlock, base):
            return base
    raise InvalidInput(f"model {model['id']} adapts {model['base_model']!r} ({model['base_digest']}), but the "
                       f"engines here serve {', '.join(map(repr, served))} with other weights: an adapter is served "
                       "only on the very base model it was trained on")


def load_everywhere(airlock: Airlock, model_id: str, base: str) -> None:
    """Load the adapter into every local replica of `base` and try it on each, before any alias
    names it: a request may reach any of them.

    The signed manifest and the stored bytes are verified once, right before the loads, into one
    copy every replica reads (another copy would replace it: serving_copy keeps the newest only).
    The replicas load and answer their smoke tests at the same time, each in its own process, so
    a hand-off to several replicas takes about as long as to one."""
    clients = [wait_for_engine(airlock, replica_settings(airlock.settings, replica))
               for replica in fleet(airlock.settings) if replica.model == base and replica.local]
    # vLLM knows each adapter by its content-derived id: one it holds needs no load.
    missing = [client for client in clients if model_id not in client.loaded_adapters()]
    with ThreadPoolExecutor(max_workers=max(len(clients), 1), thread_name_prefix="load-adapter") as pool:
        if missing:
            path = verified_copy(airlock, model_id)
            list(pool.map(lambda client: client.load_adapter(model_id, path), missing))
        list(pool.map(lambda client: client.smoke_test(model_id), clients))


def stage_candidate(airlock: Airlock, request: RequestRow, *, actor: str = "worker") -> dict:
    """Serve a candidate under its request's staging name, for its author and its reviewers."""
    model = get_model(airlock, request["model_id"])
    base = check_base(airlock, model)
    load_everywhere(airlock, model["id"], base)
    with airlock.meta.write() as db:
        db["aliases"].upsert({"name": request["staging_name"], "model_id": model["id"], "lora_name": model["id"],
                              "base_model": base, "updated_at": now(),
                              "staged_for": request["alias"], "audience": request["author"],
                              "promotion_id": None, "revoked_note": None}, pk="name")
    airlock.meta.audit(actor, "alias.staged", request["staging_name"], model_id=model["id"], request=request["id"])
    return {"staging_name": request["staging_name"], "model_id": model["id"]}


def switch(airlock: Airlock, alias: str, model_id: str, promotion_id: int, *, actor: str,
           event: str = "promoted") -> dict:
    """Point a production alias at `model_id` under promotion `promotion_id`: the record is
    verified, the adapter loaded (verified again) and smoke-tested, then the row switches."""
    check_alias(alias, airlock.settings)
    model = get_model(airlock, model_id)
    base = check_base(airlock, model)
    verify_record(airlock, alias, model_id, promotion_id, served_base_digest(airlock, base))
    load_everywhere(airlock, model_id, base)
    with airlock.meta.write() as db:
        db["aliases"].upsert({"name": alias, "model_id": model_id, "lora_name": model_id,
                              "base_model": base, "updated_at": now(),
                              "staged_for": None, "audience": None, "promotion_id": promotion_id,
                              "revoked_note": None}, pk="name")
        db["alias_history"].insert({"alias": alias, "model_id": model_id, "lora_name": model_id, "at": now(),
                                    "promotion_id": promotion_id, "event": event})
    airlock.meta.audit(actor, "alias.switched", alias, model_id=model_id, promotion=promotion_id, event=event)
    return {"alias": alias, "model_id": model_id, "lora_name": model_id, "promotion_id": promotion_id}


def deploy(airlock: Airlock, model_id: str, alias: str, actor: str = "worker") -> dict:
    """Serve `model_id` under `alias` again by hand: only with an approved promotion of that
    model to that alias (the newest), checked like every load."""
    check_alias(alias, airlock.settings)
    get_model(airlock, model_id)
    row = airlock.meta.one("SELECT id FROM promotions WHERE model_id = ? AND alias = ? AND record_digest IS NOT NULL "
                           "ORDER BY id DESC LIMIT 1", (model_id, alias))
    if row is None:
        raise GateRefused(f"model {model_id} has no approved promotion to {alias!r}; it cannot be served there "
                          "(a run proposes it, the alias's policy and its approvers promote it)")
    return switch(airlock, alias, model_id, row["id"], actor=actor, event="deployed")


def list_aliases(airlock: Airlock, *, staging: bool = False) -> list[dict]:
    """Production aliases (and, with `staging`, the staging names too)."""
    where = "" if staging else " WHERE staged_for IS NULL"
    return airlock.meta.query(f"SELECT * FROM aliases{where} ORDER BY name")

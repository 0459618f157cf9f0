"""One reconciler: whatever restarted the engine, aliases come back only through verification.
(Its loop also promotes the canaries whose window passed: serve/canary.py.)

It compares the aliases in the database with the adapters the engine has loaded and, for each
alias whose adapter is missing, checks the alias's promotion record (a production alias) or its
pending request (a staging name), verifies the signed manifest and the stored bytes again, makes
a fresh serving copy and loads it. An alias that fails verification stays unloaded (the gateway
answers 503 for it) and the failure is an audit row, repeated only when the reason changes.
"""

from __future__ import annotations

import logging
import threading

from airlock.context import Airlock
from airlock.errors import AirlockError, IntegrityFailure
from airlock.promotion.records import verify_record
from airlock.states import RequestState
from airlock.serve.canary import promote_passed
from airlock.serve.deploy import served_base_digest
from airlock.serve.engine import EngineClient, engine_client
from airlock.serve.fleet import fleet, replica_settings
from airlock.serve.serving_copy import load_verified

log = logging.getLogger("airlock.reconcile")
INTERVAL_S = 1.0


class Reconciler:
    """Every local replica of every engine: a replica that (re)started gets each alias of its base
    model back, verified, whichever replica restarted."""

    def __init__(self, airlock: Airlock) -> None:
        self.airlock = airlock
        self.replicas = [(r, engine_client(replica_settings(airlock.settings, r)))
                         for r in fleet(airlock.settings) if r.local]
        self.failures: dict[str, str] = {}  # alias -> last reason, to audit each change once

    def once(self) -> dict[str, str]:
        """Load what is missing; returns {alias: 'restored' | 'refused: ...'} for what it did."""
        aliases = self.airlock.meta.query("SELECT name, model_id, lora_name, base_model, staged_for, promotion_id "
                                          "FROM aliases WHERE revoked_note IS NULL ORDER BY name")
        done: dict[str, str] = {}
        for replica, client in self.replicas:
            rows = [row for row in aliases if row["base_model"] == replica.model]
            if not rows or not client.is_healthy(timeout=1.0):
                continue
            loaded = set(client.loaded_adapters())
            for row in rows:
                if row["lora_name"] in loaded:
                    self.failures.pop(row["name"], None)
                    continue
                done[row["name"]] = self._restore(row, client)
                loaded = set(client.loaded_adapters())
        return done

    def _may_serve(self, row: dict) -> None:
        """A production alias needs its promotion record; a staging name a pending request."""
        if row["staged_for"] is None:
            verify_record(self.airlock, row["name"], row["model_id"], row["promotion_id"],
                          served_base_digest(self.airlock, row["base_model"]))
            return
        request = self.airlock.meta.one("SELECT state FROM promotion_requests WHERE staging_name = ? "
                                        "AND model_id = ?", (row["name"], row["model_id"]))
        if request is None or request["state"] not in (RequestState.PENDING, RequestState.APPROVED):
            raise IntegrityFailure(f"staging name {row['name']!r} has no open promotion request for {row['model_id']}")

    def _restore(self, row: dict, client: EngineClient) -> str:
        try:
            self._may_serve(row)
            load_verified(self.airlock, client, row["model_id"])
        except AirlockError as exc:
            reason = str(exc)
            if self.failures.get(row["name"]) != reason:
                self.failures[row["name"]] = reason
                log.error("alias %s NOT restored: %s", row["name"], reason)
                self.airlock.meta.audit("reconciler", "alias.restore_refused", row["name"],
                                        model_id=row["model_id"], reason=reason)
            return f"refused: {reason}"
        self.failures.pop(row["name"], None)
        log.info("alias %s -> %s restored after verification", row["name"], row["model_id"])
        self.airlock.meta.audit("reconciler", "alias.restored", row["name"], model_id=row["model_id"])
        return "restored"

    def run_until(self, stop: threading.Event) -> None:
        while not stop.wait(INTERVAL_S):
            try:
                self.once()
            except Exception:  # noqa: BLE001 - the next round tries again; the log says why
                log.exception("reconciling aliases with the engine failed")
            try:
                for canary in promote_passed(self.airlock):  # canary windows that ended well
                    log.info("canary %s: %s now serves %s", canary.id, canary.alias, canary.candidate_id)
            except Exception:  # noqa: BLE001 - as above
                log.exception("promoting the canaries that passed failed")

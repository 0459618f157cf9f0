"""The supervisor: starts the engine, the worker and the gateway, restarts whichever crashes
(1, 2, 4 ... s apart, at most `restart_backoff_max_s`), stops them all at once when one exits
for a configuration error (a restart cannot fix a setting), publishes each one's state in
`run/status.json`, and on SIGTERM or Ctrl-C, at any moment, start-up included, stops all of them
and removes what they left (the engine's socket and secret).

It holds the home's lock for its whole life, so exactly one appliance runs per home.
"""

from __future__ import annotations

import json
import logging
import os
import threading
import time
from collections.abc import Callable

import httpx

from airlock.config import Settings
from airlock.errors import ConfigurationError, NotReady
from airlock.home import HomeLock, appliance_pid
from airlock.private import PRIVATE_FILE
from airlock.serve.engine import EngineClient
from airlock.serve.fleet import Replica, check_socket_path, fleet, replica_environment, replica_settings
from airlock.serve.vllm_server import clear_engine_dir, log_tail, served_model_missing
from airlock.supervisor.services import NAMES, Service
from airlock.tls import check_configured, local_gateway
from airlock.trust.atomic import write_atomic
from airlock.trust.keys import ensure_appliance_key
from airlock.workflow.worker import LAST_EXIT_ENV

log = logging.getLogger("airlock.supervisor")
TICK_S = 0.25


def status_path(settings: Settings):
    return settings.run_dir / "status.json"


class Supervisor:
    def __init__(self, settings: Settings, on_status: Callable[[str], None] = print) -> None:
        self.settings = settings
        self.say = on_status
        self.lock = HomeLock(settings)
        self.stop_requested = threading.Event()
        # The first replica of the first engine is "engine", as on an appliance of one engine; every
        # other replica is "engine:REPLICA", its own supervised service with its own folder.
        self.replicas = {("engine" if i == 0 else f"engine:{r.name}"): r
                         for i, r in enumerate(r for r in fleet(settings) if r.local)}
        self.services = {}
        for name in (*self.replicas, *NAMES[1:]):
            env = replica_environment(self.replicas[name]) if name in self.replicas else {}
            self.services[name] = Service(name, settings.run_dir / f"{name.replace(':', '-')}.log", env=env)
        self.engines = {name: EngineClient(replica_settings(settings, r)) for name, r in self.replicas.items()}
        if settings.tls_enabled:
            # Refused here, once and clearly, rather than by a gateway restarted again and again.
            check_configured(settings)
        self.gateway = local_gateway(settings)
        self.gateway_http = httpx.Client(trust_env=False, verify=self.gateway.verify)
        self.started_at = time.time()
        self._last_status = ""

    # -- life cycle --------------------------------------------------------------------------

    def start(self) -> None:
        """Take the home's lock and start the three services (nothing waits for readiness here)."""
        self.check_configured()
        self.settings.ensure_dirs()
        self.lock.acquire()
        ensure_appliance_key(self.settings)  # created at first start, owner-only
        self._clear_engines()  # leftovers of an appliance that was killed
        models = ", ".join(sorted({r.model for r in self.replicas.values()}))
        count = len(self.replicas)
        self.say(f"starting the engine ({models}" + (f"; {count} replicas" if count > 1 else "") + "), "
                 "the worker and the gateway")
        for service in self.services.values():
            service.start()
        self.publish()

    def check_configured(self) -> None:
        """What a service would only find out by crashing, refused here once and clearly."""
        for replica in self.replicas.values():
            settings = replica_settings(self.settings, replica)
            folder = settings.model_path(replica.model)
            if not (folder / "config.json").is_file():
                raise served_model_missing(settings, folder)
        for replica in self.replicas.values():
            check_socket_path(self.settings, replica)

    def wait_ready(self) -> bool:
        """Supervise until the engine and the gateway are ready; False if a stop came first."""
        while not self.stop_requested.is_set():
            self.tick()
            if all(self.services[n].state == "ready" for n in (*self.replicas, "gateway")):
                self.say(f"ready: gateway on {self.settings.gateway_url} "
                         f"(OpenAI API at {self.settings.gateway_url}/v1)")
                return True
            self.stop_requested.wait(TICK_S)
        return False

    def run(self) -> None:
        """Supervise until a stop is requested."""
        while not self.stop_requested.wait(TICK_S):
            self.tick()

    def stop(self) -> None:
        """Stop every service (gateway, worker, engine), clean up, and release the lock."""
        self.stop_requested.set()
        if self.lock.fd is None:
            return
        self.say("stopping")
        for name in reversed(self.services):
            self.services[name].stop()
        self._clear_engines()
        self.publish()
        status_path(self.settings).unlink(missing_ok=True)
        self.lock.release()
        self.say("stopped")

    # -- one round of supervision ------------------------------------------------------------

    def tick(self) -> None:
        now = time.monotonic()
        for service in self.services.values():
            code = service.exited()
            if code is not None and not self.stop_requested.is_set():
                self._crashed(service, code)
            elif service.state == "backoff" and now >= service.next_start:
                self.say(f"restarting {service.name} (restart {service.restarts})")
                service.start()
            elif service.state in ("starting", "running", "ready"):
                service.state = "ready" if self._is_ready(service.name) else (
                    "starting" if service.state == "starting" else "running")
        self.publish()

    def _crashed(self, service: Service, code: int) -> None:
        if code == ConfigurationError.exit_code:
            # Restarting would fail the same way every 30 s while `airlock up` waits for ever.
            tail = log_tail(service.log_path, 5).rstrip()
            raise ConfigurationError(f"{service.name} cannot start: its configuration is wrong (exit {code}); "
                                     f"fix the setting its log names and start again. {service.log_path}:\n{tail}")
        service.schedule_restart(code, self.settings.restart_backoff_max_s)
        if service.name == "worker":
            service.env[LAST_EXIT_ENV] = f"its process {service.last_exit}"
        if service.name in self.replicas:
            clear_engine_dir(replica_settings(self.settings, self.replicas[service.name]))
        tail = log_tail(service.log_path, 5).rstrip()
        self.say(f"{service.name} {service.last_exit}; restarting in {service.next_start - time.monotonic():.0f} s"
                 + (f"; last lines of {service.log_path.name}:\n{tail}" if tail else ""))

    def _is_ready(self, name: str) -> bool:
        if name in self.engines:
            return self.engines[name].is_healthy(timeout=0.5)
        if name == "gateway":
            try:
                url = f"{self.gateway.url}/healthz"
                return self.gateway_http.get(url, timeout=0.5, extensions=self.gateway.extensions).status_code == 200
            except httpx.HTTPError:
                return False
        return True  # the worker is ready once its process runs: it claims runs at once

    def publish(self) -> None:
        """Write run/status.json (atomically) when anything changed: `airlock status` reads it."""
        status = {"pid": os.getpid(), "home": str(self.settings.home), "started_at": self.started_at,
                  "gateway_url": self.settings.gateway_url, "serve_base_model": self.settings.serve_base_model,
                  "services": {n: s.describe() for n, s in self.services.items()},
                  "engines": [_replica_status(r, n) for n, r in self.replicas.items()]}
        text = json.dumps(status, indent=2, sort_keys=True)
        if text == self._last_status:
            return
        self._last_status = text
        write_atomic(status_path(self.settings), text.encode(), PRIVATE_FILE)

    def _clear_engines(self) -> None:
        for replica in self.replicas.values():
            clear_engine_dir(replica_settings(self.settings, replica))


def read_status(settings: Settings) -> dict:
    """The running appliance's status; NotReady when none runs on this home."""
    pid = appliance_pid(settings)
    if pid is None:
        raise NotReady(f"no appliance is running on {settings.home}; start one with `airlock up`")
    try:
        return json.loads(status_path(settings).read_text())
    except (OSError, ValueError):
        return {"pid": pid, "home": str(settings.home), "services": {}}


def _replica_status(replica: Replica, service: str) -> dict:
    return {"replica": replica.name, "engine": replica.engine, "model": replica.model, "service": service,
            "folder": str(replica.folder), "gpus": replica.gpus, "cpus": replica.cpus}

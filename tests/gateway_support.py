"""A real gateway in-process (uvicorn on a free loopback port), for the OpenAI client, httpx and
the browser: its URL, settings and an admin key."""

from __future__ import annotations

import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import uvicorn
from vllm_fixtures import free_port

from airlock.access.keys import create_key
from airlock.config import Settings
from airlock.gateway import create_app
from airlock.meta import open_meta


@dataclass
class Gateway:
    url: str
    settings: Settings
    key: str
    app: object

    @property
    def meta(self):
        return self.app.state.meta

    def new_key(self, role: str = "inference", **options) -> str:
        """The secret of a new key of `role` on this gateway's database; its next request sees it."""
        _, secret = create_key(open_meta(self.settings.db_path), f"tests-{role}", role=role, **options)
        return secret


class _Server(uvicorn.Server):
    def install_signal_handlers(self) -> None:  # the test runner owns signals
        pass


def run_gateway(settings: Settings, ui=None) -> Iterator[Gateway]:
    app = create_app(settings, ui)
    _, key = create_key(open_meta(settings.db_path), "tests", role="admin")
    server = _Server(uvicorn.Config(app, host=settings.gateway_host, port=settings.gateway_port, http="httptools",
                                    log_level="warning", lifespan="on"))
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    deadline = time.monotonic() + 15
    while not server.started:
        if not thread.is_alive() or time.monotonic() > deadline:
            raise RuntimeError("the gateway did not start")
        time.sleep(0.02)
    try:
        yield Gateway(url=settings.gateway_url, settings=settings, key=key, app=app)
    finally:
        server.should_exit = True
        thread.join(timeout=15)


def gateway_settings(home: Path, **overrides) -> Settings:
    values = {"home": home, "gateway_port": free_port(), "vllm_port": free_port()}
    return Settings(**(values | overrides))

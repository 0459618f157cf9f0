"""Fixtures: a pair made by airlock's generator, and `airlock gateway` serving TLS with it in front
of the stand-in engine (the gateway's own TLS is what is tested, not vLLM)."""

from __future__ import annotations

import sys
from collections.abc import Iterator
from pathlib import Path

import pytest
from tls_support import Pair, TlsGateway
from vllm_fixtures import free_port

from airlock.access.keys import create_key
from airlock.config import REPO_ROOT, Settings
from airlock.meta import open_meta
from airlock.serve.vllm_server import prepare_engine_dir
from airlock.tls import generate_self_signed

# The stand-in engine and the gateway process come from the repository's bench/, beside src/.
if str(REPO_ROOT) not in sys.path:
    sys.path.insert(0, str(REPO_ROOT))
from bench.capacity_bench import start_stub  # noqa: E402
from bench.procs import GatewayProcess, stop_group  # noqa: E402


@pytest.fixture
def pair(tmp_path: Path, request: pytest.FixtureRequest) -> Pair:
    """A self-signed pair for gw.test and 127.0.0.1, or for the names a test passes indirectly."""
    p = Pair(tmp_path / "gateway.crt", tmp_path / "gateway.key")
    generate_self_signed(p.cert, p.key, getattr(request, "param", ["gw.test", "127.0.0.1"]))
    return p


@pytest.fixture
def tls_gateway(tmp_path: Path, pair: Pair) -> Iterator[TlsGateway]:
    """`airlock gateway` with AIRLOCK_TLS_CERT/KEY on a free port, the stand-in on the engine socket."""
    settings = Settings(home=tmp_path / "home", gateway_port=free_port(), models_dir=REPO_ROOT / "offline_models",
                        tls_cert=pair.cert, tls_key=pair.key)
    settings.ensure_dirs()
    prepare_engine_dir(settings)
    _, key = create_key(open_meta(settings.db_path), "tls-tests", role="inference")
    stub = start_stub(settings, None)
    gateway = GatewayProcess(settings)  # `python -m airlock gateway`, AIRLOCK_TLS_* in its environment
    try:
        gateway.start()  # polls /healthz as airlock's own probes do: verifying the certificate
        yield TlsGateway(settings.gateway_url, settings.gateway_port, key, settings, pair)
    finally:
        gateway.stop()
        stop_group(stub)

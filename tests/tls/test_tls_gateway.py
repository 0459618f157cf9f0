"""The real gateway process over TLS: the official openai client trusting only its certificate, a
plain-HTTP request and untrusting clients refused, and no start at all on a bad pair."""

from __future__ import annotations

import os
import ssl
import subprocess
import sys
from pathlib import Path

import httpx
import openai
import pytest
from tls_support import Pair, TlsGateway, gateway_command, openssl_pair, trusting
from vllm_fixtures import free_port

from airlock.config import Settings
from airlock.supervisor.supervisor import Supervisor
from airlock.tls import local_gateway

pytestmark = pytest.mark.slow


def caused_by(exc: BaseException, kind: type) -> BaseException | None:
    while exc is not None:
        if isinstance(exc, kind):
            return exc
        exc = exc.__cause__ or exc.__context__
    return None


def test_openai_client_trusting_only_the_certificate_is_served(tls_gateway: TlsGateway):
    assert tls_gateway.url.startswith("https://127.0.0.1:")
    with httpx.Client(verify=trusting(tls_gateway.pair.cert)) as http:
        client = openai.OpenAI(base_url=f"{tls_gateway.url}/v1", api_key=tls_gateway.key, http_client=http,
                               max_retries=0)
        assert "airlock-tiny" in [m.id for m in client.models.list()]
        reply = client.chat.completions.create(model="airlock-tiny", max_tokens=8,
                                               messages=[{"role": "user", "content": "Say hello."}])
        assert reply.choices[0].message.content == "Hello, operator."
        # The same connection is kept: the handshake is paid once, not per request.
        assert http.get(f"{tls_gateway.url}/readyz").json()["components"]["engine"] == "ready"


def test_ssl_cert_file_makes_an_unmodified_openai_client_trust_it(tls_gateway: TlsGateway):
    """What docs/gateway.md tells client teams: no code change, only the environment."""
    code = ("import openai, sys; c = openai.OpenAI(base_url=sys.argv[1], api_key=sys.argv[2], max_retries=0); "
            "print([m.id for m in c.models.list()])")
    env = {**os.environ, "SSL_CERT_FILE": str(tls_gateway.pair.cert)}
    out = subprocess.run([sys.executable, "-c", code, f"{tls_gateway.url}/v1", tls_gateway.key], env=env,
                         capture_output=True, text=True, timeout=60)
    assert out.returncode == 0 and "airlock-tiny" in out.stdout, out.stderr


def test_plain_http_to_the_tls_port_gets_no_answer(tls_gateway: TlsGateway):
    with pytest.raises((httpx.RemoteProtocolError, httpx.ReadError)):
        httpx.get(f"http://127.0.0.1:{tls_gateway.port}/healthz", timeout=5, trust_env=False)


def test_clients_that_do_not_trust_the_certificate_fail_verification(tls_gateway: TlsGateway, tmp_path: Path):
    other = openssl_pair(tmp_path, "DNS:gw.test,IP:127.0.0.1")
    for verify in (True, trusting(other.cert)):  # the public CAs; another certificate for the same names
        with httpx.Client(verify=verify, trust_env=False) as http:
            client = openai.OpenAI(base_url=f"{tls_gateway.url}/v1", api_key=tls_gateway.key, http_client=http,
                                   max_retries=0)
            with pytest.raises(openai.APIConnectionError) as caught:
                client.models.list()
        error = caused_by(caught.value, ssl.SSLCertVerificationError)
        assert error is not None and "certificate verify failed" in str(error)


def test_a_name_the_certificate_does_not_cover_fails_verification(tls_gateway: TlsGateway):
    with httpx.Client(verify=trusting(tls_gateway.pair.cert), trust_env=False) as http:
        with pytest.raises(httpx.ConnectError, match="Hostname mismatch|doesn't match"):
            http.get(f"https://localhost:{tls_gateway.port}/healthz")


@pytest.mark.parametrize("pair", [["gw.test"]], indirect=True)
def test_the_supervisor_probe_verifies_against_the_configured_certificate(tls_gateway: TlsGateway, tmp_path: Path):
    """The certificate names gw.test only, the gateway listens on 127.0.0.1: the probe still checks
    the certificate (for gw.test), and one configured with another certificate is not ready."""
    settings = tls_gateway.settings
    probe = local_gateway(settings)
    assert probe.extensions == {"sni_hostname": "gw.test"}
    assert probe.client_url == f"https://gw.test:{tls_gateway.port}"
    assert Supervisor(settings)._is_ready("gateway")
    other = openssl_pair(tmp_path, "DNS:gw.test")
    wrong = settings.model_copy(update={"tls_cert": other.cert, "tls_key": other.key})
    assert not Supervisor(wrong)._is_ready("gateway")


def refused_start(tmp_path: Path, pair: Pair) -> tuple[int, str]:
    settings = Settings(home=tmp_path / "home", gateway_port=free_port())
    proc = gateway_command(settings, pair, stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    out, err = proc.communicate(timeout=60)
    return proc.returncode, " ".join((out + err).decode().split())  # rich wraps long lines


def test_gateway_refuses_to_start_with_a_wrong_pair_naming_both_files(tmp_path: Path, pair: Pair):
    other = openssl_pair(tmp_path, "DNS:gw.test")
    code, said = refused_start(tmp_path, Pair(pair.cert, other.key))
    assert code == 2, said
    assert f"AIRLOCK_TLS_CERT={pair.cert}" in said and f"AIRLOCK_TLS_KEY={other.key}" in said
    assert "key of another certificate" in said


def test_gateway_refuses_to_start_with_a_group_readable_key(tmp_path: Path, pair: Pair):
    pair.key.chmod(0o640)
    code, said = refused_start(tmp_path, pair)
    assert code == 2 and f"the private key {pair.key} has mode 0640" in said, said


def test_gateway_refuses_to_start_with_half_a_pair(tmp_path: Path, pair: Pair):
    code, said = refused_start(tmp_path, Pair(pair.cert, ""))  # as an environment file would leave it
    assert code == 2 and "AIRLOCK_TLS_CERT is set but AIRLOCK_TLS_KEY is not" in said, said

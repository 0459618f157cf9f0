"""A local user's browser turned against the gateway: a page on evil.example rebinds its name to
the gateway's address, so the browser sends the page's requests with `Host: evil.example` and
lets the page read the answers. And /metrics, open to anyone who can reach the port.

The requests come from another process run as user `nobody` (a different local user), over a
real socket, to a real gateway."""

from __future__ import annotations

import json
import subprocess
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest
from gateway_support import Gateway, gateway_settings, run_gateway
from vllm_fixtures import free_port

# What the other user runs: the standard library only, one request, the status and body printed.
PROBE = """
import http.client, json, sys
conn = http.client.HTTPConnection("127.0.0.1", int(sys.argv[1]), timeout=10)
conn.request("GET", sys.argv[2], headers={"Host": sys.argv[3]})
resp = conn.getresponse()
print(json.dumps({"status": resp.status, "body": resp.read().decode(errors="replace")}))
"""


def as_nobody(port: int, path: str, host: str) -> dict:
    """GET `path` with `Host: host` from a process of user nobody (uid 65534)."""
    done = subprocess.run(["/usr/bin/python3", "-I", "-c", PROBE, str(port), path, host], user=65534, group=65534,
                          capture_output=True, text=True, timeout=30, cwd="/")
    assert done.returncode == 0, done.stderr
    return json.loads(done.stdout)


@pytest.fixture
def named_gateway(tmp_path: Path) -> Iterator[Gateway]:
    """A gateway whose operator named it airlock.example.org."""
    yield from run_gateway(gateway_settings(tmp_path / "home", allowed_hosts="airlock.example.org"))


@pytest.mark.parametrize("path", ["/metrics", "/readyz", "/healthz", "/v1/models", "/api/runs", "/"])
def test_a_rebound_name_is_refused_before_any_route_runs(named_gateway, path):
    """Had it worked, the other user's process would read the gateway's metrics or the engine's
    and worker's states (or any other page) under the name evil.example."""
    port = named_gateway.settings.gateway_port
    answer = as_nobody(port, path, "evil.example")
    assert answer["status"] == 400, answer
    error = json.loads(answer["body"])["error"]
    assert "'evil.example'" in error["message"] and "AIRLOCK_ALLOWED_HOSTS" in error["message"]
    assert "airlock_gateway" not in answer["body"] and "components" not in answer["body"]


@pytest.mark.parametrize("host", ["evil.example:{port}", "airlock.example.org.evil.example", "127.0.0.1.nip.io",
                                  "", "[::2]:{port}"])
def test_look_alike_hosts_are_refused_too(named_gateway, host):
    """Had one worked, a name the operator never gave (a suffix, a port trick, no name at all)
    would open the gateway to a rebinding page."""
    port = named_gateway.settings.gateway_port
    answer = as_nobody(port, "/readyz", host.format(port=port))
    assert answer["status"] == 400, answer


@pytest.mark.parametrize("host", ["airlock.example.org", "AIRLOCK.example.org:{port}", "127.0.0.1:{port}",
                                  "localhost:{port}", "[::1]:{port}"])
def test_the_gateways_own_names_and_loopback_are_answered(named_gateway, host):
    """The operator's name and the loopback names local probes use still reach the routes."""
    port = named_gateway.settings.gateway_port
    answer = as_nobody(port, "/readyz", host.format(port=port))
    assert answer["status"] == 503 and "components" in answer["body"], answer  # no engine: not ready


def test_metrics_need_a_key_with_the_metrics_permission(named_gateway):
    """Had it worked, anyone who reaches the port (another local user's process here) would
    read request counts by route and status, and the failed authentications."""
    gw = named_gateway
    port = gw.settings.gateway_port
    anonymous = as_nobody(port, "/metrics", "127.0.0.1")
    assert anonymous["status"] == 401 and "airlock_gateway" not in anonymous["body"], anonymous
    url = f"{gw.url}/metrics"
    inference = httpx.get(url, headers={"Authorization": f"Bearer {gw.new_key('inference')}"})
    assert inference.status_code == 403 and "'metrics'" in inference.json()["error"]["message"]
    admin = httpx.get(url, headers={"Authorization": f"Bearer {gw.key}"})
    assert admin.status_code == 200 and "airlock_gateway_requests_total" in admin.text


def test_a_scraper_reads_metrics_on_a_listener_of_its_own_with_the_same_host_check(tmp_path):
    """The operator's alternative for a scraper without a key: AIRLOCK_METRICS_PORT. Had the
    host check been left out there, a rebinding page could read it instead."""
    metrics_port = free_port()
    settings = gateway_settings(tmp_path / "home", metrics_port=metrics_port)
    for gw in run_gateway(settings):
        plain = as_nobody(metrics_port, "/metrics", f"127.0.0.1:{metrics_port}")
        assert plain["status"] == 200 and "airlock_gateway_requests_total" in plain["body"], plain
        assert as_nobody(metrics_port, "/metrics", "evil.example")["status"] == 400
        assert as_nobody(metrics_port, "/readyz", "127.0.0.1")["status"] == 404
        # The gateway's own port still wants a key.
        assert httpx.get(f"{gw.url}/metrics").status_code == 401
    with pytest.raises(httpx.ConnectError):  # the listener stops with the gateway
        httpx.get(f"http://127.0.0.1:{metrics_port}/metrics", timeout=2)


def test_an_operator_who_allows_every_host_gets_what_they_asked(tmp_path):
    """"*" turns the check off (documented as unsafe): the setting really is the switch."""
    for gw in run_gateway(gateway_settings(tmp_path / "home", allowed_hosts="*")):
        assert as_nobody(gw.settings.gateway_port, "/healthz", "evil.example")["status"] == 200

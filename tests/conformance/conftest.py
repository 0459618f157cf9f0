"""The conformance suite runs against the same live gateway the gateway tests use: the fixture is
defined once, in tests/gateway/conftest.py, and re-exported here (tests/ is on sys.path, as it is
for `vllm_fixtures`)."""

from gateway.conftest import live_gateway  # noqa: F401

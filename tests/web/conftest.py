"""The web UI's tests run against a real gateway (`ui_gateway`) and in a real browser (the
`browser` fixture of tests/browser_fixtures.py); tests/browser_harness.py holds what they assert with."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest
from gateway_support import Gateway, gateway_settings, run_gateway

from airlock.web import install


@pytest.fixture
def ui_gateway(tmp_path: Path) -> Iterator[Gateway]:
    """A gateway serving the web UI, on a fresh home, with an admin key (`.key`)."""
    yield from run_gateway(gateway_settings(tmp_path / "home"), ui=install)

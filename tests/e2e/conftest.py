"""A real appliance (`airlock up`: gateway, worker, vLLM) in a subprocess, shared by the e2e tests."""

from __future__ import annotations

import pytest
from e2e_support import RunningAppliance, running_appliance


@pytest.fixture(scope="session")
def appliance(tmp_path_factory, tiny_models_dir) -> RunningAppliance:
    with running_appliance(tmp_path_factory.mktemp("appliance") / "home", tiny_models_dir) as running:
        yield running

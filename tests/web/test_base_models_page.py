"""The Models page lists base models, with an imported model's provenance, against a real gateway
over HTTP: an admin sees where it lies and where it came from; other roles see no host path."""

from __future__ import annotations

import html
from pathlib import Path

import httpx
import pytest
from gateway_support import gateway_settings, run_gateway
from model_folders import hf_folder

from airlock.context import Airlock
from airlock.models.admission import admit_folder
from airlock.web import install

pytestmark = pytest.mark.slow


@pytest.fixture
def gateway_with_import(tmp_path: Path, tiny_models_dir: Path):
    settings = gateway_settings(tmp_path / "home", models_dir=tmp_path / "models", serve_base_model="site-llama")
    carried = hf_folder(tmp_path / "carried", tiny_models_dir / "airlock-tiny")
    model = admit_folder(Airlock.open(settings), carried, name="site-llama", actor="os:operator")
    for gateway in run_gateway(settings, ui=install):
        yield gateway, model, carried


def page_text(gateway, secret: str) -> str:
    client = httpx.Client(base_url=gateway.url, follow_redirects=False)
    assert client.post("/sign-in", data={"key": secret}).status_code == 303
    response = client.get("/models")
    assert response.status_code == 200
    return html.unescape(" ".join(response.text.split()))


def test_the_models_page_shows_an_imported_base_model(gateway_with_import) -> None:
    gateway, model, carried = gateway_with_import
    admin = page_text(gateway, gateway.key)
    for shown in ("site-llama", "folder, imported by os:operator", str(carried), str(model.path), model.digest,
                  "{{- bos_token -}}", "256", f"{model.size_bytes:,} bytes", f"{len(list(carried.iterdir()))} file digest(s) recorded", "engine"):
        assert shown in admin, shown
    trainer = page_text(gateway, gateway.new_key("trainer"))
    assert "site-llama" in trainer and model.digest in trainer and "imported by os:operator" in trainer
    assert str(carried) not in trainer and str(model.path) not in trainer

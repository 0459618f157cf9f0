"""The model families airlock admits, and the tensors a folder of each must hold.

A family is admitted when PEFT can put LoRA on it (training) and the installed vLLM serves it
with LoRA adapters (serving). Asking the libraries costs seconds (importing vLLM's registry takes
about ten), so the list is pinned here and tests/models/test_model_families.py checks it against
the installed PEFT, vLLM and transformers: a library upgrade that drops a family fails there.

From a family and a config.json, `expected_tensors` names every tensor and its shape, the way the
family's transformers and vLLM classes name them: this is what lets a folder's weights be checked
against its config from the safetensors headers alone, before anything is loaded.
"""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class Family:
    architecture: str  # config.json's architectures[0], the class vLLM and transformers build
    tied_default: bool  # tie_word_embeddings when config.json does not say (the config class's default)
    head_dim_default: int | None = None  # head_dim when config.json does not say; None: hidden / heads
    kv_heads_default: int | None = None  # num_key_value_heads when config.json does not say; None: heads
    qkv_bias: bool = False  # q/k/v carry a bias whatever the config says (Qwen2)
    qk_norm: bool = False  # per-head RMSNorm on queries and keys (Qwen3)
    sandwich_norms: bool = False  # norms before and after the MLP too (Gemma 2)


FAMILIES: dict[str, Family] = {
    "llama": Family("LlamaForCausalLM", tied_default=False),
    "mistral": Family("MistralForCausalLM", tied_default=False, kv_heads_default=8),
    "qwen2": Family("Qwen2ForCausalLM", tied_default=False, kv_heads_default=32, qkv_bias=True),
    "qwen3": Family("Qwen3ForCausalLM", tied_default=False, head_dim_default=128, kv_heads_default=32, qk_norm=True),
    "gemma": Family("GemmaForCausalLM", tied_default=True, head_dim_default=256, kv_heads_default=16),
    "gemma2": Family("Gemma2ForCausalLM", tied_default=True, head_dim_default=256, kv_heads_default=4,
                     sandwich_norms=True),
}
SUPPORTED_MODEL_TYPES = tuple(sorted(FAMILIES))
# Required config.json fields, each a positive integer, from which every shape follows.
SHAPE_FIELDS = ("vocab_size", "hidden_size", "intermediate_size", "num_hidden_layers", "num_attention_heads")
# Buffers some checkpoints carry that no loader reads (older Llama exports saved them).
IGNORED_SUFFIXES = (".rotary_emb.inv_freq",)


def config_problems(config: dict, family: Family) -> list[str]:
    """What in config.json keeps its shapes from being known: missing or non-integer sizes."""
    problems = []
    for field in (*SHAPE_FIELDS, "num_key_value_heads", "head_dim"):
        value = config.get(field)
        if field in SHAPE_FIELDS and value is None:
            problems.append(f"{field} is missing")
        elif value is not None and (not isinstance(value, int) or isinstance(value, bool) or value <= 0):
            problems.append(f"{field} is {value!r}, not a positive integer")
    if config.get("architectures") not in (None, [family.architecture]):
        problems.append(f"architectures is {config.get('architectures')!r}; a model_type "
                        f"{config.get('model_type')!r} folder is served as [{family.architecture!r}]")
    return problems


def expected_tensors(config: dict, family: Family) -> dict[str, tuple[int, ...]]:
    """Every tensor name the family's loaders read, with its shape, for this config (which
    `config_problems` found complete)."""
    hidden, vocab, inter = config["hidden_size"], config["vocab_size"], config["intermediate_size"]
    heads = config["num_attention_heads"]
    kv_heads = config.get("num_key_value_heads") or family.kv_heads_default or heads
    head_dim = config.get("head_dim") or family.head_dim_default or hidden // heads
    q, kv = heads * head_dim, kv_heads * head_dim
    attention_bias = bool(config.get("attention_bias", False))
    mlp_bias = bool(config.get("mlp_bias", False))
    tensors: dict[str, tuple[int, ...]] = {"model.embed_tokens.weight": (vocab, hidden), "model.norm.weight": (hidden,)}
    if not config.get("tie_word_embeddings", family.tied_default):
        tensors["lm_head.weight"] = (vocab, hidden)
    for i in range(config["num_hidden_layers"]):
        layer = f"model.layers.{i}."
        projections = {"q_proj": (q, hidden), "k_proj": (kv, hidden), "v_proj": (kv, hidden), "o_proj": (hidden, q)}
        for proj, shape in projections.items():
            tensors[f"{layer}self_attn.{proj}.weight"] = shape
            if attention_bias or (family.qkv_bias and proj != "o_proj"):
                tensors[f"{layer}self_attn.{proj}.bias"] = shape[:1]
        for proj, shape in {"gate_proj": (inter, hidden), "up_proj": (inter, hidden), "down_proj": (hidden, inter)}.items():
            tensors[f"{layer}mlp.{proj}.weight"] = shape
            if mlp_bias:
                tensors[f"{layer}mlp.{proj}.bias"] = shape[:1]
        norms = ["input_layernorm", "post_attention_layernorm"]
        if family.sandwich_norms:
            norms += ["pre_feedforward_layernorm", "post_feedforward_layernorm"]
        for norm in norms:
            tensors[f"{layer}{norm}.weight"] = (hidden,)
        if family.qk_norm:
            tensors[f"{layer}self_attn.q_norm.weight"] = (head_dim,)
            tensors[f"{layer}self_attn.k_norm.weight"] = (head_dim,)
    return tensors


def tensor_problems(config: dict, family: Family, found: dict[str, tuple[int, ...]]) -> list[str]:
    """How the tensors `found` in the weights differ from what config.json implies: wrong shapes,
    layers missing whole, single tensors missing, tensors no loader would read."""
    expected = expected_tensors(config, family)
    tied = "lm_head.weight" not in expected
    problems = [f"{name} has shape {list(found[name])}, config.json implies {list(shape)}"
                for name, shape in expected.items() if name in found and tuple(found[name]) != shape]
    missing = [name for name in expected if name not in found]
    whole_layers = [i for i in range(config["num_hidden_layers"])
                    if not any(name.startswith(f"model.layers.{i}.") for name in found)]
    if whole_layers:
        problems.append(f"layer(s) {', '.join(map(str, whole_layers))} missing: config.json says num_hidden_layers "
                        f"{config['num_hidden_layers']}")
    missing = [name for name in missing if not any(name.startswith(f"model.layers.{i}.") for i in whole_layers)]
    problems += [f"{name} missing (shape {list(expected[name])} expected)" for name in missing]
    # A tied head may be stored anyway; it must then have the embedding's shape.
    if tied and "lm_head.weight" in found and tuple(found["lm_head.weight"]) != expected["model.embed_tokens.weight"]:
        problems.append(f"lm_head.weight has shape {list(found['lm_head.weight'])}, config.json implies "
                        f"{list(expected['model.embed_tokens.weight'])}")
    unexpected = sorted(name for name in found if name not in expected and not name.endswith(IGNORED_SUFFIXES)
                        and not (tied and name == "lm_head.weight"))
    if unexpected:
        shown = ", ".join(unexpected[:5]) + (f" and {len(unexpected) - 5} more" if len(unexpected) > 5 else "")
        problems.append(f"{len(unexpected)} tensor(s) that a {config.get('model_type')} model with this config does "
                        f"not have: {shown}")
    return problems

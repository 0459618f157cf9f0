"""Turn a GGUF file into a plain Hugging Face model folder (bf16 safetensors) that airlock can
fine-tune and vLLM can serve.

GGUF is how many small instruct models travel (llama.cpp's format). airlock trains with PEFT and
serves with vLLM, both of which want a Hugging Face folder, so a GGUF file is converted once:
transformers' GGUF loader (it needs the `gguf` package) dequantizes the weights, and the result
is saved as bf16 safetensors with the tokenizer, its chat template and the generation config.

The conversion is deterministic (the same GGUF file gives the same bytes on every run) so that a
converted model's digest can be checked against another host's, and it is atomic: it is written
into a hidden sibling of `dest` and renamed into place only when complete.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
from collections import Counter
from pathlib import Path

from airlock.errors import InvalidInput
from airlock.models.provenance import PROVENANCE_FILE
# GGUF architecture -> the transformers class it becomes. Only families that PEFT, vLLM and
# transformers' GGUF loader all handle, and that a test converted, are listed.
SUPPORTED_ARCHITECTURES = {"llama": "LlamaForCausalLM"}
# Tensor types that are plain floats: they say nothing about how the model was quantized.
_FLOAT_TYPES = {"F32", "F16", "BF16", "F64"}


def read_gguf_header(gguf_file: Path) -> dict:
    """The architecture and the quantization of a GGUF file, read without loading the weights.

    `dequantized_from` is the quantized tensor type holding the most parameters (norms and
    sometimes the embeddings stay in float), or the float type where nothing is quantized.
    """
    gguf_file = Path(gguf_file)
    if not gguf_file.is_file():
        raise InvalidInput(f"GGUF file {gguf_file} does not exist")
    try:
        from gguf import GGUFReader
    except ImportError:
        raise InvalidInput("converting a GGUF file needs the `gguf` package (./install.sh installs it)") from None
    try:
        reader = GGUFReader(str(gguf_file))
        field = reader.fields["general.architecture"]
        architecture = bytes(field.parts[field.data[0]]).decode("utf-8")
        elements: Counter[str] = Counter()
        for tensor in reader.tensors:
            elements[tensor.tensor_type.name] += int(tensor.n_elements)
    except KeyError:
        raise InvalidInput(f"{gguf_file} is not a usable GGUF file: it names no general.architecture") from None
    except (ValueError, IndexError, OSError, UnicodeDecodeError) as exc:
        # GGUFReader reports a short file as a numpy or struct error deep in its parser.
        raise InvalidInput(f"{gguf_file} is not a readable GGUF file (truncated or damaged?): {exc}") from None
    if not elements:
        raise InvalidInput(f"{gguf_file} holds no tensors")
    quantized = Counter({t: n for t, n in elements.items() if t not in _FLOAT_TYPES})
    dominant = (quantized or elements).most_common(1)[0][0]
    return {"architecture": architecture, "dequantized_from": dominant,
            "tensor_types": dict(sorted(elements.items()))}


def convert_gguf(gguf_file: Path, dest: Path, *, provenance: dict) -> dict:
    """Convert `gguf_file` into the model folder `dest` and return its provenance record.

    The record (also written as `dest/airlock-provenance.json`) holds the caller's `provenance`
    entries, the GGUF file's name and sha256, the quantization it was dequantized from and the
    sha256 of every file written. `dest` must not exist yet.
    """
    gguf_file, dest = Path(gguf_file), Path(dest)
    header = read_gguf_header(gguf_file)
    if header["architecture"] not in SUPPORTED_ARCHITECTURES:
        raise InvalidInput(
            f"{gguf_file} is a {header['architecture']!r} model; airlock converts GGUF files of these "
            f"architectures only: {', '.join(sorted(SUPPORTED_ARCHITECTURES))}",
        )
    if dest.exists():
        raise InvalidInput(f"{dest} already exists; remove it or choose another name")
    dest.parent.mkdir(parents=True, exist_ok=True)
    tmp = dest.parent / f".{dest.name}.converting-{os.getpid()}"
    shutil.rmtree(tmp, ignore_errors=True)
    try:
        _dequantize_into(gguf_file, tmp)
        record = {
            **provenance,
            "source": "gguf",
            "gguf": {"file": gguf_file.name, "sha256": _sha256(gguf_file)},
            "dequantized_from": header["dequantized_from"],
            "architecture": SUPPORTED_ARCHITECTURES[header["architecture"]],
            "dtype": "bfloat16",
            "files": {p.relative_to(tmp).as_posix(): _sha256(p)
                      for p in sorted(tmp.rglob("*")) if p.is_file()},
        }
        (tmp / PROVENANCE_FILE).write_text(json.dumps(record, indent=2, sort_keys=True) + "\n", encoding="utf-8")
        for path in tmp.iterdir():  # save_pretrained writes the weights owner-only, the rest by umask
            path.chmod(0o644)
        tmp.rename(dest)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return record


def _dequantize_into(gguf_file: Path, out: Path) -> None:
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer, GenerationConfig

    folder, name = str(gguf_file.parent), gguf_file.name
    tokenizer = AutoTokenizer.from_pretrained(folder, gguf_file=name)
    # float32 first: dequantized blocks are exact there, and the one cast to bf16 below rounds
    # each weight once, the same way on every host.
    model = AutoModelForCausalLM.from_pretrained(folder, gguf_file=name, dtype=torch.float32)
    # A model loaded from GGUF remembers its quantizer and refuses save_pretrained; the weights in
    # memory are already plain tensors, so forgetting it is all that is needed.
    model.hf_quantizer = None
    model.is_quantized = False
    if hasattr(model.config, "quantization_config"):
        del model.config.quantization_config
    model.to(torch.bfloat16)
    model.config.dtype = torch.bfloat16
    model.save_pretrained(out, safe_serialization=True)
    # The chat template goes into tokenizer_config.json, where every transformers and vLLM version
    # looks, as the reference model's does.
    tokenizer.save_pretrained(out, save_jinja_files=False)
    _write_generation_config(model, tokenizer, out, GenerationConfig)
    _normalize_json(out)


def _write_generation_config(model, tokenizer, out: Path, generation_config_class) -> None:
    # GGUF files carry no generation settings; the model's own token ids make greedy decoding
    # stop where the chat template ends a turn.
    config = generation_config_class(
        bos_token_id=tokenizer.bos_token_id, eos_token_id=tokenizer.eos_token_id,
        pad_token_id=tokenizer.pad_token_id,
    )
    config.save_pretrained(out)


def _normalize_json(out: Path) -> None:
    """Rewrite every JSON file with sorted keys, so that key order from dict insertion (which may
    follow loader internals) never changes the bytes. tokenizer.json keeps its order: its
    vocabulary order is part of what it means and the tokenizers library writes it stably."""
    for path in sorted(out.glob("*.json")):
        if path.name == "tokenizer.json":
            continue
        data = json.loads(path.read_text(encoding="utf-8"))
        if path.name == "tokenizer_config.json":
            # How this process loaded the tokenizer, not what the model is.
            for key in ("is_local", "local_files_only"):
                data.pop(key, None)
            # transformers 5 writes its internal 'TokenizersBackend', which older releases (still
            # found in serving images) cannot resolve; this name loads tokenizer.json as it is.
            data["tokenizer_class"] = "PreTrainedTokenizerFast"
        path.write_text(json.dumps(data, indent=2, sort_keys=True) + "\n", encoding="utf-8")


def _sha256(path: Path) -> str:
    with path.open("rb") as f:
        return hashlib.file_digest(f, "sha256").hexdigest()

"""The reference base model: a tiny Llama or Qwen2 built from the corpus that ships in the repo.

No weights can be downloaded on an air-gapped site, yet every stage (training, evaluation,
serving) needs a real base model to run against. This one is built locally, reproducibly, in
well under two minutes on two CPU cores. It knows nothing useful: it exists so that the whole
path works and so that a LoRA adapter visibly teaches it facts it did not know.
"""

from __future__ import annotations

import json
import os
import shutil
from collections.abc import Callable
from contextlib import contextmanager
from pathlib import Path

from airlock.errors import InvalidInput

CORPUS_DIR = Path(__file__).parent / "corpus"
ARCHITECTURES = {"llama": "LlamaForCausalLM", "qwen2": "Qwen2ForCausalLM"}

BOS, EOS, PAD, UNK = "<|bos|>", "<|eos|>", "<|pad|>", "<|unk|>"
ROLES = ("system", "user", "assistant")
# Tool results get their own turn marker. vLLM's llama3_json tool-call parser (the one for the
# llama family, see tool_calls.py) refuses a vocabulary without Llama 3's <|python_tag|>.
TOOL, PYTHON_TAG = "<|tool|>", "<|python_tag|>"
SPECIAL_TOKENS = [PAD, BOS, EOS, UNK, *(f"<|{role}|>" for role in ROLES), TOOL, PYTHON_TAG]

# transformers 5 ignores tokenizer_config.json's class for model_type qwen2 and rebuilds the
# pipeline as Qwen2Tokenizer does: NFC, this split, then byte-level without its own regex. Using
# that pipeline for every architecture means every loader (transformers, vLLM) encodes text
# exactly as pretraining did. Byte-level BPE never emits UNK; naming one that exists stops
# Qwen2Tokenizer from appending its default '<|endoftext|>' past the end of the vocabulary.
PRETOKENIZE_REGEX = (
    r"""(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}| ?[^\s\p{L}\p{N}]+[\r\n]*"""
    r"""|\s*[\r\n]+|\s+(?!\S)|\s+"""
)

# Assistant turns end with EOS and nothing after it, so rendering [..., user] with a generation
# prompt and appending "answer<|eos|>" gives exactly the rendering of [..., user, assistant]:
# training code can mask the prompt by length, and vLLM stops at EOS on its own.
# Tools follow Llama 3's JSON style, so the llama3_json parser reads what an adapter trained on
# these renders writes: the tools are listed in a system turn first, an assistant's calls are
# {"name": ..., "parameters": ...} objects joined by "; ", and results come in <|tool|> turns.
# A chat without tools renders as it did before tools were supported.
CHAT_TEMPLATE = (
    "{{- bos_token -}}"
    "{%- if tools -%}"
    "{{- '<|system|>\\nYou can call these functions. To call one, answer with only a JSON object: "
    "{\"name\": function name, \"parameters\": object of argument names and values}.' -}}"
    "{%- for tool in tools -%}"
    "{{- '\\n' + ((tool['function'] if tool['function'] is defined else tool) | tojson) -}}"
    "{%- endfor -%}"
    "{{- '\\n' -}}"
    "{%- endif -%}"
    "{%- for message in messages -%}"
    "{%- if message['role'] not in ['system', 'user', 'assistant', 'tool'] -%}"
    "{{- raise_exception('unsupported role: ' + message['role']) -}}"
    "{%- endif -%}"
    "{{- '<|' + message['role'] + '|>\\n' + ((message['content'] or '') | trim) -}}"
    "{%- if message['role'] == 'assistant' and message['tool_calls'] -%}"
    "{%- for call in message['tool_calls'] -%}"
    "{%- set function = call['function'] if call['function'] is defined else call -%}"
    "{%- set arguments = function['arguments'] if function['arguments'] is defined else {} -%}"
    "{{- ('; ' if not loop.first else '') + '{\"name\": ' + (function['name'] | tojson) -}}"
    "{{- ', \"parameters\": ' + (arguments if arguments is string else arguments | tojson) + '}' -}}"
    "{%- endfor -%}"
    "{%- endif -%}"
    "{%- if message['role'] == 'assistant' -%}{{- eos_token -}}{%- else -%}{{- '\\n' -}}{%- endif -%}"
    "{%- endfor -%}"
    "{%- if add_generation_prompt -%}{{- '<|assistant|>\\n' -}}{%- endif -%}"
)

Progress = Callable[[str, int, int], None]


def build_reference_model(
    dest: Path,
    *,
    arch: str = "llama",
    seed: int = 0,
    vocab_size: int = 2048,
    hidden_size: int = 128,
    num_layers: int = 2,
    num_heads: int = 4,
    pretrain_steps: int = 300,
    batch_size: int = 8,
    seq_len: int = 128,
    learning_rate: float = 1e-2,
    num_threads: int = 1,
    corpus_dir: Path = CORPUS_DIR,
    overwrite: bool = False,
    progress: Progress | None = None,
) -> Path:
    """Build the reference model into `dest` and return `dest`.

    Same arguments on the same software stack give byte-identical files. The folder appears
    only when complete: it is built beside `dest` under a hidden name and renamed into place.
    `num_threads` is pinned because float sums may depend on how work is split between threads.

    The defaults were chosen by loss reached per CPU second: two layers at a high learning rate
    reach a far lower loss in ~40 s than four layers do, and fluent corpus English is the point.
    Tests pass much smaller values to build in a few seconds.
    """
    if arch not in ARCHITECTURES:
        raise InvalidInput(f"unknown architecture {arch!r}; choose one of: {', '.join(ARCHITECTURES)}")
    # vLLM's CPU attention takes head sizes 32, 64, 80, ...; 128 / 4 heads = 32 is the smallest.
    if hidden_size % num_heads:
        raise InvalidInput(f"hidden_size {hidden_size} is not divisible by num_heads {num_heads}")
    dest, corpus_dir = Path(dest), Path(corpus_dir)
    if dest.exists() and not overwrite:
        raise InvalidInput(f"{dest} already exists; pass overwrite=True to rebuild it")
    documents = load_corpus(corpus_dir)
    if not documents:
        raise InvalidInput(f"no corpus text found in {corpus_dir} (expected *.txt files)")

    dest.parent.mkdir(parents=True, exist_ok=True)
    tmp = dest.parent / f".{dest.name}.building-{os.getpid()}"
    shutil.rmtree(tmp, ignore_errors=True)
    try:
        with _deterministic(seed, num_threads):
            tokenizer = train_tokenizer(documents, vocab_size)
            model = _new_model(arch, tokenizer, hidden_size, num_layers, num_heads)
            final_loss = _pretrain(model, tokenizer, documents, seed=seed, steps=pretrain_steps,
                                   batch_size=batch_size, seq_len=seq_len, lr=learning_rate,
                                   progress=progress)
        _save(tmp, model, tokenizer)
        n_params = sum(p.numel() for p in model.parameters())
        card = _model_card(
            name=dest.name, arch=arch, seed=seed, n_params=n_params, config=model.config,
            pretrain_steps=pretrain_steps, batch_size=batch_size, seq_len=seq_len,
            final_loss=final_loss, corpus_files=sorted(p.name for p in corpus_dir.glob("*.txt")),
        )
        (tmp / "README.md").write_text(card, encoding="utf-8")
        # The weights are written owner-only; a serving process under another user (a
        # container, a service account) must still read them.
        for path in tmp.iterdir():
            path.chmod(0o644)
        tmp.chmod(0o755)
        _replace(tmp, dest)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return dest


def load_corpus(corpus_dir: Path = CORPUS_DIR) -> list[str | list[dict]]:
    """Paragraphs of every *.txt file, in name order.

    A paragraph whose every line starts with 'System:', 'User:' or 'Assistant:' is a chat and
    becomes a list of messages; any other paragraph is prose.
    """
    documents: list[str | list[dict]] = []
    for path in sorted(Path(corpus_dir).glob("*.txt")):
        for block in path.read_text(encoding="utf-8").split("\n\n"):
            lines = [line.strip() for line in block.strip().splitlines() if line.strip()]
            if not lines:
                continue
            messages = [_parse_turn(line) for line in lines]
            if all(messages):
                documents.append(messages)
            else:
                documents.append(" ".join(lines))
    return documents


def _parse_turn(line: str) -> dict | None:
    role, sep, content = line.partition(": ")
    if sep and role.lower() in ROLES:
        return {"role": role.lower(), "content": content}
    return None


def train_tokenizer(documents: list[str | list[dict]], vocab_size: int):
    """A byte-level BPE tokenizer with the chat template, as a transformers fast tokenizer."""
    from tokenizers import Regex, Tokenizer, decoders, models, normalizers, pre_tokenizers
    from tokenizers import processors, trainers
    from transformers import PreTrainedTokenizerFast

    texts = [doc if isinstance(doc, str) else m["content"] for doc in documents
             for m in ([None] if isinstance(doc, str) else doc)]
    backend = Tokenizer(models.BPE())
    backend.normalizer = normalizers.NFC()
    backend.pre_tokenizer = pre_tokenizers.Sequence([
        pre_tokenizers.Split(Regex(PRETOKENIZE_REGEX), behavior="isolated", invert=False),
        pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=False),
    ])
    backend.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size, min_frequency=2, special_tokens=SPECIAL_TOKENS,
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(), show_progress=False,
    )
    backend.train_from_iterator(texts, trainer)
    # Plain encodes start with BOS like the pretraining documents; chat renders carry their own
    # BOS and are encoded without special tokens by transformers and vLLM alike.
    bos_id = backend.token_to_id(BOS)
    backend.post_processor = processors.TemplateProcessing(
        single=f"{BOS} $A", pair=f"{BOS} $A {BOS} $B", special_tokens=[(BOS, bos_id)],
    )
    return PreTrainedTokenizerFast(
        tokenizer_object=backend, bos_token=BOS, eos_token=EOS, pad_token=PAD, unk_token=UNK,
        extra_special_tokens=[f"<|{role}|>" for role in ROLES], model_max_length=512,
        chat_template=CHAT_TEMPLATE, clean_up_tokenization_spaces=False,
    )


def _new_model(arch: str, tokenizer, hidden_size: int, num_layers: int, num_heads: int):
    import transformers

    common = dict(
        vocab_size=len(tokenizer), hidden_size=hidden_size, intermediate_size=hidden_size * 3,
        num_hidden_layers=num_layers, num_attention_heads=num_heads,
        num_key_value_heads=max(1, num_heads // 2), max_position_embeddings=512,
        tie_word_embeddings=True, bos_token_id=tokenizer.bos_token_id,
        eos_token_id=tokenizer.eos_token_id, pad_token_id=tokenizer.pad_token_id,
    )
    if arch == "llama":
        config = transformers.LlamaConfig(**common)
    else:
        config = transformers.Qwen2Config(**common, use_sliding_window=False)
    model_cls = getattr(transformers, ARCHITECTURES[arch])
    return model_cls(config)


def _encode_documents(tokenizer, documents: list[str | list[dict]]) -> list[list[int]]:
    encoded = []
    for doc in documents:
        if isinstance(doc, str):
            ids = tokenizer(doc, add_special_tokens=True)["input_ids"] + [tokenizer.eos_token_id]
        else:
            text = tokenizer.apply_chat_template(doc, tokenize=False)
            ids = tokenizer(text, add_special_tokens=False)["input_ids"]
        encoded.append(ids)
    return encoded


def _pretrain(model, tokenizer, documents, *, seed: int, steps: int, batch_size: int,
              seq_len: int, lr: float, progress: Progress | None) -> float:
    """A short causal-LM loop over packed windows of the corpus; returns the last loss."""
    import torch

    encoded = _encode_documents(tokenizer, documents)
    generator = torch.Generator().manual_seed(seed)
    # Several shuffled passes, concatenated, so windows cross document boundaries the way
    # packed fine-tuning data does, and every document is seen many times.
    needed = steps * batch_size * seq_len
    total = sum(map(len, encoded))
    stream: list[int] = []
    for _ in range(max(2, needed // max(total, 1) + 2)):
        for i in torch.randperm(len(encoded), generator=generator).tolist():
            stream.extend(encoded[i])
    data = torch.tensor(stream, dtype=torch.long)

    optimizer = torch.optim.AdamW(model.parameters(), lr=lr, betas=(0.9, 0.95), weight_decay=0.0)
    warmup = max(1, steps // 10)
    scheduler = torch.optim.lr_scheduler.LambdaLR(
        optimizer, lambda s: min(1.0, (s + 1) / warmup) * max(0.1, 1 - s / max(steps, 1))
    )
    model.train()
    loss_value = float("nan")
    for step in range(steps):
        starts = torch.randint(0, len(data) - seq_len - 1, (batch_size,), generator=generator)
        batch = torch.stack([data[s : s + seq_len] for s in starts.tolist()])
        loss = model(input_ids=batch, labels=batch).loss
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        optimizer.step()
        scheduler.step()
        optimizer.zero_grad(set_to_none=True)
        loss_value = loss.item()
        if progress:
            progress(f"pretraining (loss {loss_value:.2f})", step + 1, steps)
    model.eval()
    return loss_value


def _save(tmp: Path, model, tokenizer) -> None:
    from transformers import GenerationConfig
    from transformers.utils import logging as hf_logging

    # Its shard-writing bar would break the caller's own progress display.
    hf_logging.disable_progress_bar()
    try:
        model.save_pretrained(tmp, safe_serialization=True)
    finally:
        hf_logging.enable_progress_bar()
    GenerationConfig(
        bos_token_id=tokenizer.bos_token_id, eos_token_id=tokenizer.eos_token_id,
        pad_token_id=tokenizer.pad_token_id,
    ).save_pretrained(tmp)
    # The chat template goes into tokenizer_config.json, where every transformers and vLLM
    # version looks, rather than only into the newer chat_template.jinja.
    tokenizer.save_pretrained(tmp, save_jinja_files=False)
    _pin_tokenizer_class(tmp / "tokenizer_config.json")


def _pin_tokenizer_class(path: Path) -> None:
    """Record the class by a name every transformers version knows.

    transformers 5 writes its internal 'TokenizersBackend', which older releases (still found in
    serving images) cannot resolve; 'PreTrainedTokenizerFast' loads tokenizer.json as it is.
    """
    config = json.loads(path.read_text(encoding="utf-8"))
    config["tokenizer_class"] = "PreTrainedTokenizerFast"
    path.write_text(json.dumps(config, indent=2, sort_keys=True, ensure_ascii=False) + "\n",
                    encoding="utf-8")


def _replace(tmp: Path, dest: Path) -> None:
    """Rename the finished build into place; an old build is moved aside first, then removed."""
    old = None
    if dest.exists():
        old = dest.parent / f".{dest.name}.old-{os.getpid()}"
        dest.rename(old)
    tmp.rename(dest)
    if old is not None:
        shutil.rmtree(old, ignore_errors=True)


def _model_card(*, name: str, arch: str, seed: int, n_params: int, config, pretrain_steps: int,
                batch_size: int, seq_len: int, final_loss: float, corpus_files: list[str]) -> str:
    corpus = ", ".join(f"`{f}`" for f in corpus_files)
    return f"""# {name}

A **tiny** {ARCHITECTURES[arch]} model for demos and tests of airlock. It is **not useful for real
answers**: it was trained for well under a minute on a small English corpus (about 50 KB) that
ships with airlock, and it mostly recombines sentences from that corpus. Fine-tune a LoRA
adapter on it to see a model learn facts it did not know; use a real base model for real work.

| | |
| --- | --- |
| architecture | `{ARCHITECTURES[arch]}` (`{arch}`) |
| parameters | {n_params:,} |
| layers, hidden size | {config.num_hidden_layers}, {config.hidden_size} |
| attention heads, key/value heads | {config.num_attention_heads}, {config.num_key_value_heads} |
| vocabulary | {config.vocab_size} tokens, byte-level BPE trained on the same corpus |
| context length | {config.max_position_embeddings} tokens |
| tied input/output embeddings | {config.tie_word_embeddings} |
| seed | {seed} |
| pretraining | {pretrain_steps} steps of {batch_size} x {seq_len} tokens, final loss {final_loss:.3f} |
| weights | `model.safetensors`, float32 |

Training text: {corpus} from the `airlock.models` package. Chat paragraphs are
rendered with the chat template below, so the model ends assistant turns with `{EOS}`.

The chat template (in `tokenizer_config.json`) renders each turn as `<|role|>` and a newline,
then the content; user and system turns end with a newline, assistant turns with `{EOS}`. It
emits `{BOS}` itself, so encode a rendered chat without adding special tokens. Tools, when a
request has them, are listed in a first system turn; an assistant's tool calls are rendered in
Llama 3's JSON style (`{{"name": ..., "parameters": {{...}}}}`, several joined by `; `), which is
what vLLM's `llama3_json` tool-call parser reads; tool results are `{TOOL}` turns.

Rebuild it byte for byte (same software versions, same processor family) with:

    airlock models build-reference --name {name} --arch {arch} --seed {seed} --force
"""


@contextmanager
def _deterministic(seed: int, num_threads: int):
    import torch

    threads, was_deterministic = torch.get_num_threads(), torch.are_deterministic_algorithms_enabled()
    torch.set_num_threads(num_threads)
    torch.use_deterministic_algorithms(True)
    # fork_rng leaves the caller's global random state as it was.
    try:
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(seed)
            yield
    finally:
        torch.set_num_threads(threads)
        torch.use_deterministic_algorithms(was_deterministic)

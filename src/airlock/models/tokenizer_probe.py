"""Loading an imported model's tokenizer away from the importer, with a time and a memory limit.

A tokenizer is data that came with the folder: tokenizer.json can be hundreds of megabytes, and a
hostile one can ask the loader for far more memory or time than the import should give it. So it
is loaded by transformers in a child process, never with remote code, that is killed after
`timeout_s` and cannot grow past PROBE_MEMORY_BYTES. The child starts with `python -P` in an
empty working folder, so no file of the model folder (a `transformers.py`, say) can shadow a
module it imports. It answers one JSON line: the tokenizer's size and whether its chat template
renders a one-message chat.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import tempfile
from pathlib import Path
from typing import TypedDict

from airlock.children import describe_exit, die_with_parent

PROBE_MEMORY_BYTES = 4 << 30  # after its imports; the largest real tokenizers load in well under 1 GiB
PROBE_MESSAGES = [{"role": "user", "content": "Hello"}]


class TokenizerReport(TypedDict, total=False):
    tokens: int  # len(tokenizer): every id it can produce
    chat_template: bool  # the tokenizer has a chat template (its config, chat_template.jinja ...)
    render_error: str  # why the template did not render a one-message chat
    error: str  # why the tokenizer did not load (the probe's own words)


def probe_tokenizer(folder: Path, *, timeout_s: float) -> TokenizerReport:
    """Load the tokenizer of `folder` in a child process; an `error` entry says why it failed."""
    from airlock.store import without_store_credentials

    env = without_store_credentials(dict(os.environ))
    # Nothing is fetched and no module cache is shared with other runs of the library.
    env.update(HF_HUB_OFFLINE="1", TRANSFORMERS_OFFLINE="1", TOKENIZERS_PARALLELISM="false")
    with tempfile.TemporaryDirectory(prefix="airlock-tokenizer-") as empty:
        env["HF_HOME"] = empty
        try:
            done = subprocess.run(
                [sys.executable, "-P", "-m", "airlock.models.tokenizer_probe", str(Path(folder).resolve())],
                cwd=empty, env=env, capture_output=True, timeout=timeout_s, preexec_fn=die_with_parent,
            )
        except subprocess.TimeoutExpired:
            return TokenizerReport(error=f"it did not load within {timeout_s:g} s (the limit is "
                                         "AIRLOCK_MODEL_IMPORT_TOKENIZER_TIMEOUT_S)")
    lines = done.stdout.decode("utf-8", "replace").strip().splitlines()
    if done.returncode != 0 or not lines:
        tail = done.stderr.decode("utf-8", "replace").strip().splitlines()[-1:] or [""]
        return TokenizerReport(error=f"the loader {describe_exit(done.returncode)} (memory limit "
                                     f"{PROBE_MEMORY_BYTES >> 20} MiB) {tail[0][:300]}".rstrip())
    return TokenizerReport(**json.loads(lines[-1]))


def _probe(folder: str) -> TokenizerReport:
    """The child: load without remote code, then render a one-message chat."""
    import resource

    from transformers import AutoTokenizer

    resource.setrlimit(resource.RLIMIT_AS, (PROBE_MEMORY_BYTES, PROBE_MEMORY_BYTES))
    try:
        tokenizer = AutoTokenizer.from_pretrained(folder, trust_remote_code=False, local_files_only=True)
    except MemoryError:
        return TokenizerReport(error=f"loading it took more than {PROBE_MEMORY_BYTES >> 20} MiB")
    except Exception as exc:  # noqa: BLE001 - whatever the loader refuses is the folder's problem
        return TokenizerReport(error=f"{type(exc).__name__}: {str(exc)[:500]}")
    report = TokenizerReport(tokens=len(tokenizer), chat_template=bool(tokenizer.chat_template))
    if report["chat_template"]:
        try:
            tokenizer.apply_chat_template(PROBE_MESSAGES, tokenize=False, add_generation_prompt=True)
        except Exception as exc:  # noqa: BLE001 - raise_exception() in the template, a syntax error ...
            report["render_error"] = f"{type(exc).__name__}: {str(exc)[:300]}"
    return report


if __name__ == "__main__":
    sys.stdout.write(json.dumps(_probe(sys.argv[1])) + "\n")

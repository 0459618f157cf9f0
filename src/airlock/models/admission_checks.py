"""Every check a model folder must pass before `airlock models import` admits it.

Each check returns Problems (the file concerned and what is wrong) instead of raising, so that a
refusal names everything at once: the operator fixes a folder in one trip across the air gap, not
one problem per trip. Nothing here loads weights or runs the folder's code: weights are judged from
their safetensors headers, JSON is parsed as data, and the tokenizer is loaded by
`tokenizer_probe` in a child process without remote code.
"""

from __future__ import annotations

import json
import os
import re
import stat
from dataclasses import dataclass, field
from pathlib import Path

from airlock.models.catalog import UNSAFE_WEIGHT_SUFFIXES
from airlock.models.families import FAMILIES, SUPPORTED_MODEL_TYPES, Family, config_problems, tensor_problems
from airlock.models.safetensors_header import HeaderError, read_header
from airlock.models.tokenizer_probe import TokenizerReport, probe_tokenizer

# Files that are programs: transformers imports *.py named by auto_map; the rest are compiled code.
CODE_SUFFIXES = (".py", ".pyc", ".pyo", ".so")
PICKLE_SUFFIXES = (*UNSAFE_WEIGHT_SUFFIXES, ".pickle")
CONFIG_MAX_BYTES = 16 * 1024 * 1024  # the largest *config.json files real models ship are a few MiB
# Control characters would forge the tab- and newline-separated listing the model digest hashes.
_BAD_NAME = re.compile(r"[\x00-\x1f\x7f\\]")
INDEX_SUFFIX = ".safetensors.index.json"


@dataclass(frozen=True)
class Problem:
    where: str  # the file concerned, relative to the folder; "" for the folder as a whole
    what: str

    def __str__(self) -> str:
        return f"{self.where}: {self.what}" if self.where else self.what


@dataclass(frozen=True)
class Limits:
    max_bytes: int
    max_files: int
    max_header_bytes: int
    tokenizer_timeout_s: float

    @classmethod
    def from_settings(cls, settings) -> Limits:
        return cls(settings.model_import_max_bytes, settings.model_import_max_files,
                   settings.model_import_max_header_bytes, settings.model_import_tokenizer_timeout_s)


@dataclass
class Listing:
    """The regular files of a folder (relative path -> size) and what is wrong with its layout."""

    files: dict[str, int] = field(default_factory=dict)
    problems: list[Problem] = field(default_factory=list)


def scan_folder(source: Path, limits: Limits) -> Listing:
    """Walk `source` without following links: refuse links, special files, odd names, pickle and
    code files, and more files or bytes than the limits allow."""
    listing, total = Listing(), 0
    stack = [Path(source)]
    while stack and len(listing.files) <= limits.max_files:
        folder = stack.pop()
        for entry in sorted(os.scandir(folder), key=lambda e: e.name):
            path = Path(entry.path)
            rel = path.relative_to(source).as_posix()
            mode = entry.stat(follow_symlinks=False).st_mode
            if _BAD_NAME.search(entry.name):
                listing.problems.append(Problem(repr(rel), "a name with control characters or a backslash"))
            elif stat.S_ISLNK(mode):
                listing.problems.append(Problem(rel, _link_problem(path, source)))
            elif stat.S_ISDIR(mode):
                stack.append(path)
            elif not stat.S_ISREG(mode):
                listing.problems.append(Problem(rel, "not a regular file (a pipe, socket or device); nothing "
                                                     "but files and folders is copied"))
            else:
                listing.files[rel] = entry.stat(follow_symlinks=False).st_size
                total += listing.files[rel]
                listing.problems += _suffix_problems(rel)
    if len(listing.files) > limits.max_files:
        listing.problems.append(Problem("", f"more than {limits.max_files} files (AIRLOCK_MODEL_IMPORT_MAX_FILES)"))
    if total > limits.max_bytes:
        listing.problems.append(Problem("", f"{total} bytes, more than the {limits.max_bytes} allowed "
                                            "(AIRLOCK_MODEL_IMPORT_MAX_BYTES)"))
    return listing


def _link_problem(path: Path, source: Path) -> str:
    target = os.readlink(path)
    try:
        inside = path.parent.joinpath(target).resolve().is_relative_to(Path(source).resolve())
    except (OSError, RuntimeError):  # a loop of links
        inside = False
    where = "inside the folder" if inside else "outside the folder"
    return (f"a symbolic link to {target} ({where}); links are never followed: put the file itself "
            "in its place")


def _suffix_problems(rel: str) -> list[Problem]:
    suffix = Path(rel).suffix.lower()
    if suffix in PICKLE_SUFFIXES:
        return [Problem(rel, f"a pickle-based file ({suffix}): loading it can run any code, so airlock "
                             "admits safetensors weights only; convert it to safetensors or delete it")]
    if suffix in CODE_SUFFIXES:
        return [Problem(rel, "code: airlock runs no code that comes with a model (delete it, and any "
                             "auto_map naming it)")]
    return []


def check_contents(folder: Path, files: dict[str, int], limits: Limits, *,
                   chat_template_given: bool = False) -> list[Problem]:
    """The checks of what the files say: config, custom code, weights against the config, the
    tokenizer and its chat template."""
    problems: list[Problem] = []
    configs = {rel: _read_json(folder / rel, rel, problems) for rel in files
               if "/" not in rel and rel.endswith("config.json")}
    for rel, data in configs.items():
        if isinstance(data, dict) and "auto_map" in data:
            problems.append(Problem(rel, f"auto_map names custom code ({_auto_map_names(data['auto_map'])}); "
                                         "airlock runs no code that comes with a model"))
    config, family = _model_config(configs.get("config.json"), problems)
    found = _weights(folder, files, limits, problems)
    if config is not None and family is not None and found is not None:
        problems += [Problem(_weights_where(files), p) for p in tensor_problems(config, family, found)]
    problems += _tokenizer_problems(probe_tokenizer(folder, timeout_s=limits.tokenizer_timeout_s), config,
                                    chat_template_given)
    return problems


def _read_json(path: Path, rel: str, problems: list[Problem]):
    if path.stat().st_size > CONFIG_MAX_BYTES:
        problems.append(Problem(rel, f"more than {CONFIG_MAX_BYTES} bytes: too large to be a configuration"))
        return None
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except (UnicodeDecodeError, json.JSONDecodeError) as exc:
        problems.append(Problem(rel, f"not valid JSON: {exc}"))
        return None


def _auto_map_names(auto_map: object) -> str:
    if not isinstance(auto_map, dict):
        return repr(auto_map)[:200]
    return ", ".join(f"{k} -> {v}" for k, v in auto_map.items())[:300]


def _model_config(config: object, problems: list[Problem]) -> tuple[dict | None, Family | None]:
    if config is None:
        if not any(p.where == "config.json" for p in problems):
            problems.append(Problem("config.json", "missing: a Hugging Face model folder has one"))
        return None, None
    if not isinstance(config, dict):
        problems.append(Problem("config.json", "not a JSON object"))
        return None, None
    family = FAMILIES.get(config.get("model_type"))
    if family is None:
        problems.append(Problem("config.json", f"model_type {config.get('model_type')!r} is not one that both "
                                               f"PEFT and the installed vLLM support with LoRA; supported: "
                                               f"{', '.join(SUPPORTED_MODEL_TYPES)}"))
        # The weights are still judged by the family its architectures names, so that a refusal
        # lists their problems too.
        architectures = config.get("architectures")
        family = next((f for f in FAMILIES.values() if architectures == [f.architecture]), None)
        if family is None:
            return None, None
    wrong = config_problems(config, family)
    problems += [Problem("config.json", p) for p in wrong]
    return (None if wrong else config), family


def _weights(folder: Path, files: dict[str, int], limits: Limits, problems: list[Problem]) -> dict | None:
    """Every tensor's shape across the top-level weight files, or None when the headers cannot say."""
    weights = sorted(rel for rel in files if "/" not in rel and rel.endswith(".safetensors"))
    if not weights:
        problems.append(Problem("", "no *.safetensors weights at the top of the folder"))
        return None
    found: dict[str, tuple[int, ...]] = {}
    by_file: dict[str, set[str]] = {}
    for rel in weights:
        try:
            tensors = read_header(folder / rel, max_bytes=limits.max_header_bytes)
        except HeaderError as exc:
            problems.append(Problem(rel, str(exc)))
            continue
        by_file[rel] = set(tensors)
        for name, info in tensors.items():
            if name in found:
                problems.append(Problem(rel, f"tensor {name} is stored in another weight file too"))
            found[name] = info.shape
    if len(by_file) < len(weights):
        return None
    index_problems = _index_problems(folder, files, by_file)
    problems += index_problems
    return None if index_problems else found


def _index_problems(folder: Path, files: dict[str, int], by_file: dict[str, set[str]]) -> list[Problem]:
    """A sharded model's index must name exactly the shard files, each tensor in the file holding it."""
    indexes = sorted(rel for rel in files if "/" not in rel and rel.endswith(INDEX_SUFFIX))
    if not indexes:
        if len(by_file) > 1:
            return [Problem("", f"{len(by_file)} weight files and no {'model' + INDEX_SUFFIX} saying which tensor "
                                "is in which")]
        return []
    if len(indexes) > 1:
        return [Problem("", f"{len(indexes)} index files ({', '.join(indexes)}): a folder holds one model")]
    where, extra = indexes[0], []
    index = _read_json(folder / where, where, extra)
    weight_map = index.get("weight_map") if isinstance(index, dict) else None
    if extra or not isinstance(weight_map, dict) or not all(isinstance(v, str) for v in weight_map.values()):
        return extra or [Problem(where, "has no weight_map of tensor names to file names")]
    problems = [Problem(where, f"names {shard!r}, which is not a weight file of this folder")
                for shard in sorted(set(weight_map.values())) if shard not in by_file]
    problems += [Problem(rel, f"not named by {where}: remove it (loaders would skip it)")
                 for rel in sorted(set(by_file) - set(weight_map.values()))]
    for rel, names in sorted(by_file.items()):
        listed = {name for name, shard in weight_map.items() if shard == rel}
        if rel in weight_map.values() and listed != names:
            missing, unlisted = sorted(listed - names), sorted(names - listed)
            problems.append(Problem(rel, f"does not hold what {where} says: "
                                         + "; ".join(filter(None, [
                                             f"{len(missing)} tensor(s) listed but absent ({', '.join(missing[:3])})"
                                             if missing else "",
                                             f"{len(unlisted)} tensor(s) present but not listed "
                                             f"({', '.join(unlisted[:3])})" if unlisted else ""]))))
    return problems


def _weights_where(files: dict[str, int]) -> str:
    weights = sorted(rel for rel in files if "/" not in rel and rel.endswith(".safetensors"))
    return weights[0] if len(weights) == 1 else "the weights (" + ", ".join(weights) + ")"


def _tokenizer_problems(report: TokenizerReport, config: dict | None, template_given: bool) -> list[Problem]:
    where = "tokenizer"
    if "error" in report:
        return [Problem(where, f"does not load without remote code: {report['error']}")]
    problems = []
    vocab = config.get("vocab_size") if config else None
    if isinstance(vocab, int) and report["tokens"] > vocab:
        problems.append(Problem(where, f"has {report['tokens']} tokens, more than config.json's vocab_size {vocab}: "
                                       "the ids past it have no embedding"))
    if not report["chat_template"] and not template_given:
        problems.append(Problem(where, "no chat template (in tokenizer_config.json or chat_template.jinja); give one "
                                       "with --chat-template FILE"))
    if "render_error" in report:
        problems.append(Problem("chat template", f"does not render a one-message chat: {report['render_error']}"))
    return problems

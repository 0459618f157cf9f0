"""The base-model catalog: one Hugging Face format folder per model in `settings.models_dirs`
(the first folder holding a name wins).

A folder counts as a base model when it holds a `config.json` and safetensors weights. Nothing
here imports torch or transformers: listing and hashing must stay cheap enough for the CLI and
the HTTP API, and the folders are read as plain files.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import re
from dataclasses import dataclass
from pathlib import Path
from typing import TypedDict

from airlock.config import Settings
from airlock.errors import InvalidInput, NotFound
from airlock.models.provenance import PROVENANCE_FILE, Provenance, read_provenance
from airlock.models.safetensors_header import HeaderError, read_header
from airlock.models.tool_calls import tool_call_parser
from airlock.private import PRIVATE_FILE, make_private_dir
from airlock.trust.atomic import write_atomic

# Pickle-based weights can run code when loaded; they are named so the refusal can say why.
UNSAFE_WEIGHT_SUFFIXES = (".bin", ".pt", ".pth", ".ckpt", ".pkl")
LEGACY_DIGEST_CACHE = ".airlock-digest.json"
_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]*$")
_CHUNK = 1 << 20


class BaseModelRow(TypedDict):
    """A usable base-model folder as `describe_model` reads it."""

    name: str  # the folder's name, which workflows and the served model use
    path: str
    architecture: str | None  # config.json's first architecture
    model_type: str | None
    parameters: int | None  # None when a safetensors header is unreadable
    context_length: int | None  # config.json's max_position_embeddings
    tool_call_parser: str | None  # vLLM's parser for its tool calls; None: no tool calling
    digest: str
    size_bytes: int  # every file of the folder
    chat_template: str | None  # its first line, or the names of a list of templates; None: none
    provenance: Provenance | None  # airlock-provenance.json: where it came from, each file's sha256
    served_by: str | None  # the engine that serves it; None: no engine does


def list_base_models(settings: Settings) -> list[BaseModelRow]:
    """Every usable base model, sorted by name.

    Folders that are not usable (no config.json, pickle weights only) are left out here and
    reported by `refused_base_models`, so a listing never fails because of one bad folder.
    """
    models = []
    for folder in _model_folders(settings):
        # The override is the served model's: the engine serves one base model.
        served = folder.name == settings.serve_base_model
        override = settings.tool_call_parser if served else ""
        try:
            models.append(describe_model(folder, tool_call_parser_override=override,
                                         cache=digest_cache(settings), served_by="engine" if served else None))
        except InvalidInput:
            continue
    return models


def base_model_names(settings: Settings) -> set[str]:
    """The names of the folders under the models directory: cheap (no hashing), for checks that
    only need to know what a model name would mean."""
    return {folder.name for folder in _model_folders(settings)}


def refused_base_models(settings: Settings) -> list[dict]:
    """Folders under the models directory that are not usable, each with the reason."""
    refused = []
    for folder in _model_folders(settings):
        try:
            check_model_dir(folder)
        except InvalidInput as exc:
            refused.append({"name": folder.name, "path": str(folder), "reason": exc.message})
    return refused


def resolve_base_model(settings: Settings, name: str) -> Path:
    """The folder of base model `name`, checked to be usable; NotFound lists the valid names."""
    check_model_name(name)
    folder = settings.model_path(name)
    if not folder.is_dir():
        # Names only: hashing every model to build an error message would be wasted work.
        refused = {r["name"] for r in refused_base_models(settings)}
        available = [f.name for f in _model_folders(settings) if f.name not in refused]
        raise NotFound(
            f"base model {name!r} not found in {', '.join(map(str, settings.models_dirs))}; "
            + (f"available: {', '.join(available)}" if available else "no base models are installed"),
        )
    check_model_dir(folder)
    return folder


def check_model_name(name: str) -> None:
    """A model name is one plain folder name, so it can never point outside the models dir."""
    if not _NAME.match(name):
        raise InvalidInput(f"invalid base model name {name!r}: use letters, digits, '.', '_' or '-'")


def check_model_dir(folder: Path) -> None:
    """Raise InvalidInput unless `folder` has a readable config.json and safetensors weights."""
    folder = Path(folder)
    config_path = folder / "config.json"
    if not config_path.is_file():
        raise InvalidInput(f"{folder} is not a model folder: it has no config.json")
    try:
        json.loads(config_path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise InvalidInput(f"{config_path} is not valid JSON: {exc}") from None
    if any(folder.glob("*.safetensors")):
        return
    unsafe = sorted(p.name for p in folder.iterdir() if p.suffix in UNSAFE_WEIGHT_SUFFIXES)
    if unsafe:
        raise InvalidInput(
            f"{folder} holds only pickle weights ({', '.join(unsafe)}); airlock loads safetensors "
            "weights only, because pickle files can run code when loaded. Convert the model to "
            "safetensors before bringing it across.",
        )
    raise InvalidInput(f"{folder} has no *.safetensors weights")


def describe_model(folder: Path, *, tool_call_parser_override: str = "",
                   cache: Path | None = None, served_by: str | None = None) -> BaseModelRow:
    """Name, path, architecture, parameter count, context length, digest (see `model_digest` for
    `cache`), vLLM tool-call parser (None: no tool calling), size, chat template and provenance
    of one usable model folder; `served_by` names the engine serving it."""
    folder = Path(folder)
    check_model_dir(folder)
    config = json.loads((folder / "config.json").read_text(encoding="utf-8"))
    architectures = config.get("architectures") or []
    return BaseModelRow(
        name=folder.name,
        path=str(folder),
        architecture=architectures[0] if architectures else None,
        model_type=config.get("model_type"),
        parameters=count_parameters(folder),
        context_length=config.get("max_position_embeddings"),
        tool_call_parser=tool_call_parser(folder, tool_call_parser_override),
        digest=model_digest(folder, cache=cache),
        size_bytes=sum(path.stat().st_size for path in _files(folder)),
        chat_template=chat_template_summary(folder),
        provenance=read_provenance(folder),
        served_by=served_by,
    )


def chat_template_summary(folder: Path) -> str | None:
    """What a listing shows of the chat template transformers would use: chat_template.jinja
    first (it wins over tokenizer_config.json's), its first non-blank line; for a list of named
    templates, their names."""
    jinja = Path(folder) / "chat_template.jinja"
    template = None
    if jinja.is_file():
        with contextlib.suppress(OSError, UnicodeDecodeError):
            template = jinja.read_text(encoding="utf-8")
    if template is None:
        with contextlib.suppress(OSError, ValueError):
            tokenizer_config = json.loads((Path(folder) / "tokenizer_config.json").read_text(encoding="utf-8"))
            template = tokenizer_config.get("chat_template") if isinstance(tokenizer_config, dict) else None
    if isinstance(template, list):
        names = [t.get("name") for t in template if isinstance(t, dict)]
        return "named: " + ", ".join(str(n) for n in names) if names else None
    if not isinstance(template, str) or not template.strip():
        return None
    first = next(line.strip() for line in template.splitlines() if line.strip())
    return first if len(first) <= 80 else first[:77] + "..."


def count_parameters(folder: Path) -> int | None:
    """Parameters stored in the safetensors files, read from their headers only.

    Tied embeddings are stored once and so counted once. None when a header is unreadable:
    the count is informative, and the loader reports real damage on its own.
    """
    total = 0
    try:
        for path in sorted(Path(folder).glob("*.safetensors")):
            total += sum(info.numel for info in read_header(path, check_offsets=False).values())
    except (OSError, HeaderError):
        return None
    return total


def model_digest(folder: Path, *, cache: Path | None = None) -> str:
    """`sha256:<hex>` over a canonical listing of every file: relative path, size and sha256.

    Without `cache` every file is hashed. With it (`digest_cache(settings)`, a file in the
    appliance's private home, never in the model folder, where a local user or a carried file
    could write whatever it wants) a file's hash is reused only while its identity is unchanged:
    see `_FileKey` for why that identity cannot be forged by anyone but root.
    """
    folder = Path(folder)
    remembered = _read_cache(cache) if cache is not None else {}
    entries: dict[str, dict] = {}
    fresh: dict[str, dict] = {}
    for path in sorted(_files(folder), key=lambda p: p.relative_to(folder).as_posix()):
        key = _FileKey.of(path)
        hit = remembered.get(key.path)
        sha = hit["sha256"] if hit and hit.get("key") == key.values() else _sha256_file(path)
        entries[path.relative_to(folder).as_posix()] = {"size": key.size, "sha256": sha}
        fresh[key.path] = {"key": key.values(), "sha256": sha}
    if cache is not None and any(remembered.get(k) != v for k, v in fresh.items()):
        # This folder's entries are replaced whole, so files it no longer holds are forgotten.
        inside = str(folder.resolve()) + os.sep
        _write_cache(cache, {**{k: v for k, v in remembered.items() if not k.startswith(inside)}, **fresh})
    return listing_digest(entries)


def listing_digest(entries: dict[str, dict]) -> str:
    """A model's digest from its files' {relative path: {size, sha256}}: what `model_digest` hashes,
    so a folder's digest is known from a signed file list before a byte of it is written."""
    listing = "".join(f"{rel}\t{e['size']}\t{e['sha256']}\n" for rel, e in sorted(entries.items()))
    return "sha256:" + hashlib.sha256(listing.encode("utf-8")).hexdigest()


def digest_cache(settings: Settings) -> Path:
    """Where the appliance remembers the hashes of base model files: its own home, owner-only."""
    return settings.home / "cache" / "model-digests.json"


@dataclass(frozen=True)
class _FileKey:
    """What must be unchanged for a remembered hash to still be the file's.

    Size and mtime alone are not enough: anyone who can write the file can set its mtime back
    (os.utime). The ctime cannot be set that way: the kernel stamps it with the current time on
    every change of the file's bytes or metadata (a write, a utime, a chmod), and only root can
    move the clock. A file replaced by another gets a new inode or a new ctime; the device and
    the absolute path keep a cache entry to the file it was made for.
    """

    path: str
    device: int
    inode: int
    size: int
    mtime_ns: int
    ctime_ns: int

    @classmethod
    def of(cls, path: Path) -> _FileKey:
        st = path.stat()
        return cls(str(path.resolve()), st.st_dev, st.st_ino, st.st_size, st.st_mtime_ns, st.st_ctime_ns)

    def values(self) -> list[int]:
        return [self.device, self.inode, self.size, self.mtime_ns, self.ctime_ns]


def _model_folders(settings: Settings) -> list[Path]:
    """Every model folder of the models folders, one per name: the first folder's wins."""
    seen: dict[str, Path] = {}
    for models_dir in settings.models_dirs:
        for folder in _candidate_folders(models_dir):
            seen.setdefault(folder.name, folder)
    return sorted(seen.values(), key=lambda folder: folder.name)


def _candidate_folders(models_dir: Path) -> list[Path]:
    models_dir = Path(models_dir)
    if not models_dir.is_dir():
        return []
    # Hidden names are half-built or replaced models (see reference.py); never offer them.
    return sorted(p for p in models_dir.iterdir() if p.is_dir() and not p.name.startswith("."))


def _files(folder: Path):
    for root, dirs, names in os.walk(folder):
        dirs.sort()
        for name in names:
            path = Path(root) / name
            # Earlier releases kept a cache of hashes here; it is not the model (and never read).
            # The provenance record describes the model and is written after its digest is known.
            if path.parent == folder and (name.startswith(LEGACY_DIGEST_CACHE) or name == PROVENANCE_FILE):
                continue
            yield path


def _sha256_file(path: Path) -> str:
    h = hashlib.sha256()
    with path.open("rb") as f:
        while chunk := f.read(_CHUNK):
            h.update(chunk)
    return h.hexdigest()


def _read_cache(path: Path) -> dict:
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
        return data["files"] if data.get("version") == 2 and isinstance(data["files"], dict) else {}
    except (OSError, ValueError, KeyError, TypeError, AttributeError):
        return {}


def _write_cache(path: Path, entries: dict) -> None:
    # Best effort: a home that cannot be written only costs hashing again next time.
    with contextlib.suppress(OSError):
        make_private_dir(path.parent)
        write_atomic(path, json.dumps({"version": 2, "files": entries}, sort_keys=True).encode(), PRIVATE_FILE)

"""Training checkpoints: written atomically, read back exactly, and never through pickle.

A checkpoint is one folder `step-NNNNNNNN` holding exactly these files:

- `adapter_model.safetensors`, `adapter_config.json`: the adapter as PEFT saves it;
- `optimizer.safetensors`: AdamW's tensors (moments and step counts), one entry each;
- `rng.safetensors`: torch's CPU and CUDA generator states;
- `state.json`: everything else (the optimizer's parameter groups, the scheduler, Python's and
  NumPy's generator states, epoch, position in the data order, the loss history) and the
  sha256 of every other file. It is written last.

It is written, in a thread of its own while training goes on, into `.partial-step-N` and
renamed when complete, so a folder named `step-N` is
always whole: a write cut short (kill -9, a full disk) leaves only a `.partial-` folder, which
is ignored and removed. A checkpoint folder holding any other file, a pickle above all, is
refused before anything in it is read.
"""

from __future__ import annotations

import copy
import errno
import hashlib
import json
import random
import shutil
import threading
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from airlock.errors import IntegrityFailure, StageFailed
from airlock.private import make_private_dir
from airlock.store.local import fsync_path

ADAPTER_FILES = ("adapter_model.safetensors", "adapter_config.json")
FILES = (*ADAPTER_FILES, "optimizer.safetensors", "rng.safetensors", "state.json")
PREFIX, PARTIAL = "step-", ".partial-"
KEEP_LATEST = 2


@dataclass
class Progress:
    """Where training stands: enough, with the tensors, to carry on as if never stopped."""

    step: int = 0
    epoch: int = 0
    steps_in_epoch: int = 0  # steps of `epoch` already trained
    trained_tokens: int = 0
    losses: list[float] = field(default_factory=list)
    eval_losses: list[list[float]] = field(default_factory=list)  # [step, eval loss] pairs
    best_step: int | None = None
    best_eval_loss: float | None = None
    evals_without_improvement: int = 0


def _name(step: int) -> str:
    return f"{PREFIX}{step:08d}"


def _sha256(path: Path) -> str:
    with path.open("rb") as f:
        return "sha256:" + hashlib.file_digest(f, "sha256").hexdigest()


# Saving ------------------------------------------------------------------------------------------


def _rng_state() -> tuple[dict, dict]:
    """(tensors, JSON) of every generator training draws from."""
    import numpy as np
    import torch

    tensors = {"torch.cpu": torch.get_rng_state()}
    if torch.cuda.is_available():
        tensors |= {f"torch.cuda.{i}": s for i, s in enumerate(torch.cuda.get_rng_state_all())}
    version, mt, gauss = random.getstate()
    kind, keys, pos, has_gauss, cached = np.random.get_state(legacy=True)
    return tensors, {"python": [version, list(mt), gauss],
                     "numpy": [kind, keys.tolist(), int(pos), int(has_gauss), float(cached)]}


def _optimizer_state(optimizer) -> tuple[dict, dict]:
    tensors, scalars = {}, {}
    state = optimizer.state_dict()
    for index, values in state["state"].items():
        for name, value in values.items():
            if hasattr(value, "shape"):
                tensors[f"state.{index}.{name}"] = value.detach().to("cpu", copy=True).contiguous()
            else:
                scalars[f"{index}.{name}"] = value
    return tensors, {"param_groups": copy.deepcopy(state["param_groups"]), "scalars": scalars}


@dataclass
class Snapshot:
    """Copies of everything a checkpoint holds, taken between two steps, so that writing it can
    go on while training does."""

    step: int
    best_step: int | None
    adapter: dict
    adapter_config: bytes
    optimizer: tuple[dict, dict]
    scheduler: dict
    rng: tuple[dict, dict]
    progress: dict


class AdapterSource:
    """The adapter's tensors and config file, found once per training: PEFT's state dict walks
    every module of the model, and its config does not change while training (the two were most
    of a checkpoint's cost on a small model, measured)."""

    def __init__(self, model) -> None:
        import tempfile

        from peft import get_peft_model_state_dict

        # The state dict's tensors share storage with the parameters the optimizer updates in
        # place, so copying them later copies the weights as they are then.
        self.tensors = get_peft_model_state_dict(model)
        with tempfile.TemporaryDirectory() as scratch:
            model.peft_config[model.active_adapter].save_pretrained(scratch)
            self.config = (Path(scratch) / "adapter_config.json").read_bytes()

    def snapshot(self, optimizer, scheduler, progress: Progress) -> Snapshot:
        adapter = {k: v.detach().to("cpu", copy=True).contiguous() for k, v in self.tensors.items()}
        return Snapshot(step=progress.step, best_step=progress.best_step, adapter=adapter,
                        adapter_config=self.config, optimizer=_optimizer_state(optimizer),
                        scheduler=copy.deepcopy(scheduler.state_dict()), rng=_rng_state(),
                        progress=copy.deepcopy(progress.__dict__))


def write(folder: Path, snap: Snapshot) -> Path:
    """Write a snapshot as the checkpoint of its step: into a partial folder, every file
    fsynced, then renamed; the older checkpoints beyond the newest two and the best go."""
    from safetensors.torch import save_file

    make_private_dir(folder)
    final, partial = folder / _name(snap.step), folder / f"{PARTIAL}{_name(snap.step)}"
    shutil.rmtree(partial, ignore_errors=True)
    try:
        make_private_dir(partial)
        save_file(snap.adapter, partial / "adapter_model.safetensors", metadata={"format": "pt"})
        (partial / "adapter_config.json").write_bytes(snap.adapter_config)
        save_file(snap.optimizer[0], partial / "optimizer.safetensors")
        save_file(snap.rng[0], partial / "rng.safetensors")
        digests = {name: _sha256(partial / name) for name in FILES if name != "state.json"}
        state = {"format": 1, "progress": snap.progress, "optimizer": snap.optimizer[1],
                 "scheduler": snap.scheduler, "rng": snap.rng[1], "files": digests}
        (partial / "state.json").write_text(json.dumps(state, sort_keys=True))
        for name in FILES:
            fsync_path(partial / name)
        fsync_path(partial)
        shutil.rmtree(final, ignore_errors=True)
        partial.rename(final)
        fsync_path(folder)
    except Exception as exc:  # safetensors reports I/O errors as its own error type
        shutil.rmtree(partial, ignore_errors=True)
        if _disk_full(exc):
            kept = latest_step(folder)
            raise StageFailed(f"no space left on the device holding {folder} while writing the checkpoint of "
                              f"step {snap.step}; " + (f"the checkpoint of step {kept} is intact"
                                                        if kept is not None else "no earlier checkpoint exists")
                              + "; free space or set AIRLOCK_CHECKPOINTS_DIR, then `airlock runs resume`") from None
        raise
    _prune(folder, keep={snap.best_step} - {None})
    return final


class Writer:
    """Writes checkpoints in a thread of their own, one at a time: training pays for copying
    the state between two steps, not for the files and their fsyncs. A failed write is raised
    at the next checkpoint or at `wait()`."""

    def __init__(self, folder: Path, on_written: Callable[[int, Path], None] | None = None) -> None:
        self.folder, self.on_written = folder, on_written
        self._thread: threading.Thread | None = None
        self._error: BaseException | None = None
        self._source: AdapterSource | None = None

    def submit(self, model, optimizer, scheduler, progress: Progress) -> None:
        self.wait()
        self._source = self._source or AdapterSource(model)
        snap = self._source.snapshot(optimizer, scheduler, progress)
        self._thread = threading.Thread(target=self._write, args=(snap,), name="checkpoint-writer")
        self._thread.start()

    def _write(self, snap: Snapshot) -> None:
        try:
            path = write(self.folder, snap)
            if self.on_written:
                self.on_written(snap.step, path)
        except BaseException as exc:  # noqa: BLE001 - handed to the training thread
            self._error = exc

    def wait(self) -> None:
        if self._thread is not None:
            self._thread.join()
            self._thread = None
        if self._error is not None:
            error, self._error = self._error, None
            raise error


def _disk_full(exc: Exception) -> bool:
    return (isinstance(exc, OSError) and exc.errno == errno.ENOSPC) or f"os error {errno.ENOSPC})" in str(exc)


def _prune(folder: Path, keep: set[int]) -> None:
    """Keep the newest checkpoints and the best one; remove the rest."""
    steps = sorted(complete_steps(folder))
    for step in steps[:-KEEP_LATEST]:
        if step not in keep:
            shutil.rmtree(folder / _name(step))


def adapter_tensors_of(model) -> dict:
    """A copy of the adapter's weights as they are now (the best evaluation's, kept for the end)."""
    from peft import get_peft_model_state_dict

    return {k: v.detach().clone() for k, v in get_peft_model_state_dict(model).items()}


# Loading -----------------------------------------------------------------------------------------


def complete_steps(folder: Path) -> list[int]:
    if not folder.is_dir():
        return []
    return sorted(int(p.name[len(PREFIX):]) for p in folder.iterdir()
                  if p.is_dir() and p.name.startswith(PREFIX) and p.name[len(PREFIX):].isdigit())


def latest_step(folder: Path) -> int | None:
    steps = complete_steps(folder)
    return steps[-1] if steps else None


def path_of(folder: Path, step: int) -> Path:
    return folder / _name(step)


def discard_partial(folder: Path) -> list[str]:
    """Remove checkpoints whose write was cut short; returns their names."""
    if not folder.is_dir():
        return []
    cut = [p for p in folder.iterdir() if p.name.startswith(PARTIAL)]
    for path in cut:
        shutil.rmtree(path, ignore_errors=True)
    return sorted(p.name for p in cut)


def adapter_tensors(path: Path) -> dict:
    """The adapter weights of a checked checkpoint."""
    from safetensors.torch import load_file

    check(path)
    return load_file(path / "adapter_model.safetensors")


def check(path: Path) -> dict[str, Any]:
    """The checkpoint's state.json, after checking it holds exactly its files, each intact."""
    present = sorted(p.name for p in path.iterdir())
    strangers = sorted(set(present) - set(FILES))
    if strangers:
        raise IntegrityFailure(f"checkpoint {path} holds {', '.join(strangers)}, which no checkpoint holds "
                               "(only safetensors and JSON files are written); refused, nothing in it was loaded")
    missing = sorted(set(FILES) - set(present))
    if missing:
        raise IntegrityFailure(f"checkpoint {path} lacks {', '.join(missing)}; refused")
    try:
        state = json.loads((path / "state.json").read_text())
    except (UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise IntegrityFailure(f"checkpoint {path}: state.json is not valid JSON ({exc}); refused") from None
    for name, digest in state.get("files", {}).items():
        if _sha256(path / name) != digest:
            raise IntegrityFailure(f"checkpoint {path}: {name} does not match the digest in state.json "
                                   "(changed or damaged after it was written); refused")
    return state


def restore(path: Path, model, optimizer, scheduler) -> Progress:
    """Load a checked checkpoint into the model, optimizer, scheduler and every generator."""
    import numpy as np
    import torch
    from peft import set_peft_model_state_dict
    from safetensors.torch import load_file

    state = check(path)
    device = next(model.parameters()).device
    set_peft_model_state_dict(model, load_file(path / "adapter_model.safetensors", device=str(device)))
    tensors = load_file(path / "optimizer.safetensors", device=str(device))
    per_param: dict[int, dict] = {}
    for key, value in tensors.items():
        _, index, name = key.split(".", 2)
        per_param.setdefault(int(index), {})[name] = value.cpu() if name == "step" else value
    for key, value in state["optimizer"]["scalars"].items():
        index, name = key.split(".", 1)
        per_param.setdefault(int(index), {})[name] = value
    optimizer.load_state_dict({"state": per_param, "param_groups": state["optimizer"]["param_groups"]})
    scheduler.load_state_dict(state["scheduler"])
    rng = load_file(path / "rng.safetensors")
    torch.set_rng_state(rng["torch.cpu"])
    if torch.cuda.is_available():
        torch.cuda.set_rng_state_all([rng[f"torch.cuda.{i}"] for i in range(len(rng) - 1)])
    version, mt, gauss = state["rng"]["python"]
    random.setstate((version, tuple(mt), gauss))
    kind, keys, pos, has_gauss, cached = state["rng"]["numpy"]
    np.random.set_state((kind, np.array(keys, dtype=np.uint32), pos, has_gauss, cached))
    return Progress(**state["progress"])

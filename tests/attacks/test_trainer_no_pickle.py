"""Nothing that crosses a process or host boundary in training is unpickled.

Read from the source itself: no training module imports pickle (or its cousins), calls torch's
object collectives (`broadcast_object_list` and the rest pickle their objects), or calls
`torch.load` without `weights_only=True`. Were one to, a trainer or a local process that reached
the data it reads would run code as the appliance's user; a reviewer would see the call listed.
"""

from __future__ import annotations

import ast

from airlock.config import REPO_ROOT

PACKAGE = REPO_ROOT / "src" / "airlock"
TRAINING = sorted((PACKAGE / "train").rglob("*.py")) + [PACKAGE / "workflow" / "training.py",
                                                          PACKAGE / "workflow" / "stages" / "finetune.py"]
PICKLERS = {"pickle", "cPickle", "_pickle", "dill", "cloudpickle", "joblib", "shelve", "marshal"}
OBJECT_COLLECTIVES = {"broadcast_object_list", "all_gather_object", "gather_object", "scatter_object_list",
                      "send_object_list", "recv_object_list"}


def _name(node: ast.AST) -> str:
    """`torch.load` for torch.load(...), `load` for load(...)."""
    if isinstance(node, ast.Attribute):
        return f"{_name(node.value)}.{node.attr}"
    return node.id if isinstance(node, ast.Name) else ""


def _weights_only(call: ast.Call) -> bool:
    return any(k.arg == "weights_only" and isinstance(k.value, ast.Constant) and k.value.value is True
               for k in call.keywords)


def unpickling(source: str, where: str) -> list[str]:
    """Every place in `source` that could unpickle what another process wrote."""
    found = []
    for node in ast.walk(ast.parse(source)):
        at = f"{where}:{getattr(node, 'lineno', '?')}"
        if isinstance(node, ast.Import):
            found += [f"{at}: import {a.name}" for a in node.names if a.name.split(".")[0] in PICKLERS]
        elif isinstance(node, ast.ImportFrom):
            if (node.module or "").split(".")[0] in PICKLERS:
                found.append(f"{at}: from {node.module} import ...")
            found += [f"{at}: imports {a.name}" for a in node.names if a.name in OBJECT_COLLECTIVES]
        elif isinstance(node, ast.Call):
            name = _name(node.func)
            if name.split(".")[-1] in OBJECT_COLLECTIVES:
                found.append(f"{at}: {name}() pickles what it sends")
            elif name.split(".")[0] in PICKLERS:
                found.append(f"{at}: {name}()")
            elif name == "torch.load" and not _weights_only(node):
                found.append(f"{at}: {name}() without weights_only=True")
        elif isinstance(node, ast.Attribute) and node.attr in OBJECT_COLLECTIVES:
            found.append(f"{at}: refers to {node.attr}")  # passed along rather than called here
    return sorted(set(found), key=lambda hit: int(hit.split(":")[1]))


def test_no_training_module_unpickles():
    assert len(TRAINING) > 10 and all(p.exists() for p in TRAINING)
    found = [hit for path in TRAINING for hit in unpickling(path.read_text(), str(path.relative_to(REPO_ROOT)))]
    assert found == []


def test_the_check_finds_each_way_of_unpickling():
    """The check is no empty pass: each form it guards against, written out, is found."""
    bad = """
import pickle
from torch.distributed import broadcast_object_list
import torch, torch.distributed as dist
dist.broadcast_object_list([None], src=0)
dist.all_gather_object([], 1)
torch.load("x.pt")
torch.load("x.pt", weights_only=False)
pickle.loads(b"")
"""
    found = unpickling(bad, "bad.py")
    assert sorted({int(hit.split(":")[1]) for hit in found}) == [2, 3, 5, 6, 7, 8, 9], found
    assert unpickling('import torch\ntorch.load("x.pt", weights_only=True)\n', "good.py") == []

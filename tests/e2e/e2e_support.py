"""What the e2e tests share: the CLI runner of a running appliance and the quickstart data."""

from __future__ import annotations

import json
import re
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path

import yaml

from airlock.config import REPO_ROOT

AIRLOCK = str(Path(sys.executable).with_name("airlock"))
QUICKSTART = REPO_ROOT / "examples" / "quickstart.yaml"
QA = [json.loads(line)["messages"] for line in (REPO_ROOT / "examples/datasets/quickstart-eval.jsonl").read_text().splitlines()]


@dataclass
class RunningAppliance:
    env: dict
    home: Path
    gateway_url: str
    proc: subprocess.Popen

    def cli(self, *args: str, check: bool = True, timeout: float = 900) -> subprocess.CompletedProcess:
        result = subprocess.run([AIRLOCK, *args], env=self.env, capture_output=True, text=True, timeout=timeout,
                                cwd=REPO_ROOT)
        if check and result.returncode != 0:
            raise AssertionError(f"airlock {' '.join(args)} exited {result.returncode}\n{result.stdout}\n{result.stderr}")
        return result

    def new_key(self, name: str = "test") -> str:
        out = self.cli("apikey", "create", "--name", name).stdout
        return re.search(r"ak-[A-Za-z0-9_-]+", out).group(0)


def candidate_workflow(folder: Path) -> Path:
    """The quickstart without promote and serve, with absolute paths, written into `folder`."""
    spec = yaml.safe_load(QUICKSTART.read_text())
    spec["dataset"] = str(QUICKSTART.parent / spec["dataset"])
    spec["stages"] = [s for s in spec["stages"] if s["uses"] in ("finetune.lora", "evaluate.compare")]
    for stage in spec["stages"]:
        if "eval_set" in stage.get("with", {}):
            stage["with"]["eval_set"] = str(QUICKSTART.parent / stage["with"]["eval_set"])
    path = folder / "candidate.yaml"
    path.write_text(yaml.safe_dump(spec))
    return path

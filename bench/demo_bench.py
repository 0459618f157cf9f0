"""Benchmark 14: `airlock demo` end to end on the shipped instruct model, against the fast path.

Both sides run `airlock demo --exit` as a user would, from a fresh home on free ports: the
appliance started (vLLM's start included), the quickstart facts fine-tuned, evaluated, signed,
promoted and served, snippets printed, appliance stopped. Baseline: `--model airlock-tiny` (the
tiny reference model, seconds of training); airlock: the default, `smollm2-135m-instruct`. The
time to the snippets is what a user waits; the stages' own times (from the run's record) say
where it goes. Target: the real model's demo in at most 4 minutes on two cores.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from bench.procs import free_port
from bench.report import Section

AIRLOCK = str(Path(sys.executable).with_name("airlock"))
TARGET_S = 240.0
SNIPPETS = "serving alias"  # the line the demo prints once the alias serves


def run_demo(model: str, scratch: Path) -> dict:
    """Wall seconds to the snippets and to the end, and each stage's seconds, of one demo."""
    home = scratch / f"home-{model}"
    env = dict(os.environ, AIRLOCK_HOME=str(home), AIRLOCK_GATEWAY_PORT=str(free_port()), COLUMNS="240")
    env.pop("AIRLOCK_SERVE_BASE_MODEL", None)
    started = time.perf_counter()
    proc = subprocess.Popen([AIRLOCK, "demo", "--model", model, "--exit"], env=env, cwd=scratch,
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    snippets_s, output = None, []
    for line in proc.stdout:
        output.append(line)
        if snippets_s is None and SNIPPETS in line:
            snippets_s = time.perf_counter() - started
    proc.wait()
    total_s = time.perf_counter() - started
    if proc.returncode != 0 or snippets_s is None:
        raise RuntimeError(f"airlock demo --model {model} exited {proc.returncode}:\n{''.join(output)[-3000:]}")
    runs = json.loads(subprocess.run([AIRLOCK, "workflow", "list", "--json"], env=env, capture_output=True,
                                     text=True, check=True).stdout)
    run = json.loads(subprocess.run([AIRLOCK, "workflow", "status", runs[0]["id"], "--json"], env=env,
                                    capture_output=True, text=True, check=True).stdout)
    return {"snippets_s": snippets_s, "total_s": total_s, "stages": run["stages"]}


def _stage_seconds(stage: dict) -> float:
    from datetime import datetime

    return (datetime.fromisoformat(stage["finished_at"]) - datetime.fromisoformat(stage["started_at"])).total_seconds()


def run(quick: bool) -> Section:
    load0, started = os.getloadavg()[0], time.perf_counter()
    section = Section(
        title="14. The demo, start to snippets",
        what=("`airlock demo --exit` from a fresh home: the appliance started (vLLM's start included), the "
              "quickstart's eight facts fine-tuned, evaluated, signed, promoted and served, the snippets printed. "
              "Baseline: `--model airlock-tiny` (the fast path). airlock: the default, the shipped "
              f"`smollm2-135m-instruct`. Target: at most {TARGET_S:.0f} s to the snippets on the real model."))
    rows = []
    with tempfile.TemporaryDirectory(prefix="airlock-bench-demo-") as scratch:
        tiny = run_demo("airlock-tiny", Path(scratch))
        real = run_demo("smollm2-135m-instruct", Path(scratch))
    section.add("wall time to the snippets", f"{tiny['snippets_s']:.0f} s", f"{real['snippets_s']:.0f} s",
                f"{real['snippets_s'] / tiny['snippets_s']:.1f}x the fast path", f"<= {TARGET_S:.0f} s",
                real["snippets_s"] <= TARGET_S)
    for name, result in (("airlock-tiny", tiny), ("smollm2-135m-instruct", real)):
        rows += [[name, s["name"], f"{_stage_seconds(s):.0f} s"] for s in result["stages"]]
        rows.append([name, "(whole demo, stop included)", f"{result['total_s']:.0f} s"])
    section.details.append(("Where the time goes (each stage from the run's record)", ("model", "stage", "time"), rows))
    section.notes.append("The engine starts while the fine-tune runs (the worker claims the run at once); the "
                         "evaluation goes through the engine once it serves the run's base model.")
    section.seconds, section.load = time.perf_counter() - started, (load0, os.getloadavg()[0])
    return section

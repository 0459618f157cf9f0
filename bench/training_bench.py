"""Benchmark 11: the fine-tuning service. Packing against the plain padded PEFT loop, the cost
of checkpoints at the default interval, the start-up of a resumed job, and peak memory.

- Packing: `finetune()` with packing on (as a run trains by default) against `bench.plain_peft`
  on short chat data, batch 8, whole runs alternating; trained tokens per second (non-padding
  tokens / loop seconds) and the final loss of each.
- Checkpoints: the time training waits for its checkpoints (copying its state; the files are
  written in a thread of their own), summed over a run with the default interval, against the
  run's training time without it.
- Resume start-up: seconds from starting the job's process to its first trained step, fresh and
  from a checkpoint.
- Peak memory: the maximum resident set of the job's own process (`python -m airlock.train.job`)
  against a process running the plain loop on the same data and settings, read by wait4().
"""

from __future__ import annotations

import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from airlock.config import REPO_ROOT
from airlock.train.config import LoraTrainConfig
from bench import datasets, plain_peft
from bench.report import Section
from bench.stats import median, ratio, spread

BASE_DIR = REPO_ROOT / "offline_models" / "airlock-tiny"
REAL_DIR = REPO_ROOT / "offline_models" / "smollm2-135m-instruct"  # the shipped real model
PACKING_TARGET, LOSS_TOLERANCE, CHECKPOINT_TARGET, MEMORY_TARGET = 1.5, 0.01, 0.05, 1.0


def padding_ratio(records: list[list[dict]], batch_size: int) -> float:
    """Tokens of the padded batches over tokens of the records, in the first epoch's order."""
    from transformers import AutoTokenizer

    from airlock.train.recipe import batches_for_epoch, encode_dataset

    examples = encode_dataset(AutoTokenizer.from_pretrained(BASE_DIR), records, 512)
    batches = batches_for_epoch(examples, batch_size, 0, 0)
    padded = sum(len(b) * max(len(e.input_ids) for e in b) for b in batches)
    return padded / sum(len(e.input_ids) for e in examples)


def packing_runs(records, config: LoraTrainConfig, pairs: int, scratch: Path) -> dict:
    from airlock.train.recipe import finetune

    ours, plain, rows = [], [], []
    for pair in range(pairs):
        for side in (("airlock", "baseline") if pair % 2 == 0 else ("baseline", "airlock")):
            out = scratch / f"{side}-{pair}"
            if side == "airlock":
                a = finetune(BASE_DIR, records, config, out)
                ours.append(a.trained_tokens / a.seconds)
            else:
                b = plain_peft.train(BASE_DIR, records, config, out)
                plain.append(b.tokens / b.seconds)
        rows.append([f"pair {pair + 1}", f"{plain[-1]:,.0f}", f"{ours[-1]:,.0f}", f"{ours[-1] / plain[-1]:.3f}"])
    return {"a": ours, "b": plain, "rows": rows, "loss": (a.losses[-1], b.losses[-1]), "packing": a.packing,
            "tokens": (a.trained_tokens, b.tokens)}


def packing_on_off(base: Path, records, config: LoraTrainConfig, scratch: Path) -> dict:
    """airlock's own loop with packing on and off (one run each, off first), on `base`: trained
    tokens per second, seconds per run and the final loss of each."""
    from airlock.train.recipe import finetune

    out = {}
    for packing in ("off", "on"):
        result = finetune(base, records, config.model_copy(update={"packing": packing}), scratch / f"real-{packing}")
        out[packing] = {"rate": result.trained_tokens / result.seconds, "seconds": result.seconds,
                        "loss": result.losses[-1], "steps": len(result.losses)}
    return out


def checkpoint_cost(records, config: LoraTrainConfig, scratch: Path) -> dict:
    """Seconds training waits for checkpoints (copying the state, and any write still under way
    from the last one) against its other seconds, at the default interval; and the seconds the
    writes themselves take in their thread."""
    from airlock.train import checkpoint
    from airlock.train.recipe import Controls, finetune

    blocked, written = [], []
    real_submit, real_write = checkpoint.Writer.submit, checkpoint.write

    def timed(into: list, fn):
        def wrapper(*args, **kwargs):
            started = time.perf_counter()
            try:
                return fn(*args, **kwargs)
            finally:
                into.append(time.perf_counter() - started)
        return wrapper

    checkpoint.Writer.submit, checkpoint.write = timed(blocked, real_submit), timed(written, real_write)
    try:
        result = finetune(BASE_DIR, records, config, scratch / "ckpt-adapter",
                          controls=Controls(checkpoints=scratch / "ckpt"))
    finally:
        checkpoint.Writer.submit, checkpoint.write = real_submit, real_write
    training = result.seconds - sum(blocked)
    return {"blocked": blocked, "written": written, "steps": len(result.losses), "training_s": training,
            "share": sum(blocked) / training, "step_s": training / len(result.losses)}


def first_step_seconds(folder: Path) -> float:
    """Start the job's process and return the seconds until it reports its first step; it is
    then stopped (the stop file), and the checkpoint it writes is left for a resume."""
    from airlock.train.job import EVENTS, STOP

    (folder / EVENTS).unlink(missing_ok=True)
    (folder / STOP).unlink(missing_ok=True)
    started = time.perf_counter()
    proc = subprocess.Popen([sys.executable, "-m", "airlock.train.job", str(folder)], env=_one_thread())
    try:
        while True:
            text = (folder / EVENTS).read_text() if (folder / EVENTS).exists() else ""
            if '"kind": "step"' in text:
                seconds = time.perf_counter() - started
                (folder / STOP).write_text("benchmark")
                proc.wait(120)
                return seconds
            if proc.poll() is not None:
                raise RuntimeError(f"the job ended before its first step: {text[-2000:]}")
            time.sleep(0.005)
    finally:
        if proc.poll() is None:
            proc.kill()


def _one_thread() -> dict[str, str]:
    return {**os.environ, "OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1"}


def resume_startup(records, config: LoraTrainConfig, scratch: Path, repeats: int) -> dict:
    from airlock.workflow.training import prepare

    fresh, resumed = [], []
    for n in range(repeats):
        folder = scratch / f"resume-{n}"
        prepare(folder, BASE_DIR, config.model_dump(), records)
        fresh.append(first_step_seconds(folder))  # stops after step 1, with a checkpoint
        resumed.append(first_step_seconds(folder))
    return {"fresh": fresh, "resumed": resumed}


PLAIN_SCRIPT = """
import json, sys
sys.path.insert(0, {root!r})
from pathlib import Path
from airlock.train.config import LoraTrainConfig
from bench import plain_peft
records = [json.loads(line) for line in open({records!r})]
plain_peft.train(Path({base!r}), records, LoraTrainConfig.model_validate(json.load(open({config!r}))), Path({out!r}))
"""


def peak_rss_mb(command: list[str]) -> float:
    proc = subprocess.Popen(command, env=_one_thread(), stdout=subprocess.DEVNULL)
    _, status, usage = os.wait4(proc.pid, 0)
    proc.returncode = os.waitstatus_to_exitcode(status)
    if proc.returncode != 0:
        raise RuntimeError(f"{command[:3]} exited with {proc.returncode}")
    return usage.ru_maxrss / 1024


def peak_memory(records, config: LoraTrainConfig, scratch: Path) -> dict:
    from airlock.workflow.training import prepare

    out = {}
    for packing in ("off", "auto"):
        chosen = config.model_copy(update={"packing": packing})
        folder = scratch / f"peak-{packing}"
        prepare(folder, BASE_DIR, chosen.model_dump(), records)
        ours = peak_rss_mb([sys.executable, "-m", "airlock.train.job", str(folder)])
        (folder / "config.json").write_text(chosen.model_dump_json())
        script = PLAIN_SCRIPT.format(root=str(REPO_ROOT), records=str(folder / "records.jsonl"), base=str(BASE_DIR),
                                     config=str(folder / "config.json"), out=str(folder / "plain"))
        plain = peak_rss_mb([sys.executable, "-c", script])
        out[packing] = (ours, plain)
    return out


def run(quick: bool) -> Section:
    import torch

    started, load0 = time.perf_counter(), os.getloadavg()[0]
    section = Section(title="11. The fine-tuning service", what=(
        "Packing against the plain padded PEFT loop (trained tokens per second, whole runs alternating, ratio of "
        "the medians), the time checkpoints take at the default interval, the start-up of a job resumed from a "
        "checkpoint, and peak memory of the job's process against the plain loop's. Same model (airlock-tiny), "
        f"data, settings and torch threads ({torch.get_num_threads()} in this process, 1 in child processes)."))
    count, pairs = (160, 2) if quick else (320, 3)
    short = datasets.short_chat_records(count)
    config = LoraTrainConfig(rank=8, alpha=16, batch_size=8, epochs=2, seed=0)
    with tempfile.TemporaryDirectory(prefix="airlock-bench-train-") as tmp:
        scratch = Path(tmp)
        padding = padding_ratio(short, 8)
        packed = packing_runs(short, config, pairs, scratch)
        a, b = median(packed["a"]), median(packed["b"])
        r = ratio(a, b)
        section.add("trained tokens/s, packing on vs the padded plain loop", f"{b:,.0f}", f"{a:,.0f}",
                    f"{r:.3f}", f">= {PACKING_TARGET}", r >= PACKING_TARGET and packed["packing"])
        ours_loss, plain_loss = packed["loss"]
        gap = abs(ours_loss - plain_loss) / plain_loss
        section.add("final loss, packed vs padded", f"{plain_loss:.4f}", f"{ours_loss:.4f}", f"{gap:.2%} apart",
                    f"<= {LOSS_TOLERANCE:.0%} apart", gap <= LOSS_TOLERANCE)
        section.details.append(("packing: trained tokens/s per pair", ("run", "baseline", "airlock", "ratio"),
                                packed["rows"]))
        if (REAL_DIR / "config.json").is_file():
            real = packing_on_off(REAL_DIR, short[: 32 if quick else 64], config.model_copy(update={"epochs": 1}),
                                  scratch)
            off, on = real["off"], real["on"]
            section.add(f"trained tokens/s on {REAL_DIR.name}, packing on vs off", f"{off['rate']:,.0f}",
                        f"{on['rate']:,.0f}", f"{ratio(on['rate'], off['rate']):.3f}", "(information)", None)
            section.details.append((f"packing on {REAL_DIR.name}: {32 if quick else 64} of the same chats, batch 8, "
                                    "1 epoch, one run each", ("packing", "tokens/s", "seconds", "steps", "final loss"),
                                    [[k, f"{v['rate']:,.0f}", f"{v['seconds']:.1f}", v["steps"], f"{v['loss']:.4f}"]
                                     for k, v in real.items()]))
        else:
            section.notes.append(f"Packing on the real model: not measured, {REAL_DIR} is not installed.")
        long_config = LoraTrainConfig(rank=8, alpha=16, batch_size=4, epochs=3 if quick else 6, seed=0)
        cost = checkpoint_cost(short, long_config, scratch)
        share = cost["share"]
        section.add(f"time training waits for checkpoints / training time, every {long_config.checkpoint_every} "
                    "steps", f"{cost['training_s']:.2f} s training", f"{sum(cost['blocked']):.3f} s for "
                    f"{len(cost['blocked'])} checkpoints", f"{share:.2%}", f"<= {CHECKPOINT_TARGET:.0%}",
                    share <= CHECKPOINT_TARGET)
        startup = resume_startup(short, config, scratch, 2 if quick else 3)
        fresh, resumed = median(startup["fresh"]), median(startup["resumed"])
        section.add("seconds from job start to its first step: fresh vs resumed from a checkpoint",
                    f"{fresh:.2f}", f"{resumed:.2f}", f"{ratio(resumed, fresh):.3f}", "(information)", None)
        peaks = peak_memory(short, config, scratch)
        for packing, (ours, plain) in peaks.items():
            section.add(f"peak resident memory, MiB (packing {packing})", f"{plain:.0f}", f"{ours:.0f}",
                        f"{ratio(ours, plain):.3f}", f"<= {MEMORY_TARGET}", ours <= plain * MEMORY_TARGET)
    section.notes += [
        f"Packing workload: {count} chats (bench.datasets.short_chat_records): answers of 5-30 words (10-60 "
        "tokens), two in three with a short question, one in three with a passage before the question; batch 8, "
        f"2 epochs. Padding each batch to its longest record makes {padding:.2f} times the tokens of the records: "
        "that is the most packing can save. Tokens trained per run: airlock "
        f"{packed['tokens'][0]:,}, baseline {packed['tokens'][1]:,} (the same records; airlock counts the tokens "
        "of the records, the baseline the non-padding tokens of its batches). Per-pair ratios: "
        f"{spread([x / y for x, y in zip(packed['a'], packed['b'], strict=True)])}.",
        f"Checkpoints: {len(cost['blocked'])} in {cost['steps']} steps of batch 4 ({cost['step_s'] * 1000:.1f} ms "
        f"a step). Training waits {median(cost['blocked']) * 1000:.2f} ms for each (median: copying the adapter, "
        f"optimizer and generator states); writing one takes {median(cost['written']) * 1000:.1f} ms (median) in "
        "its own thread while training goes on: safetensors and JSON, each file fsynced, the folder renamed.",
        "Resume start-up: both figures include starting Python and importing torch, transformers and PEFT in the "
        "job's process; the resumed job also checks and loads the checkpoint. Fresh: "
        f"{spread(startup['fresh'])} s; resumed: {spread(startup['resumed'])} s.",
        "Peak memory: the job's process holds the tokenizer, the encoded dataset and, with packing, rows without "
        "padding; the plain loop holds its tensors. Both import the same libraries.",
    ]
    section.seconds, section.load = time.perf_counter() - started, (load0, os.getloadavg()[0])
    return section

"""Run the benchmarks and write BENCHMARKS.md: `python -m bench [--quick] [--only NAME ...]`.

Fine-tuning (its throughput, then the fine-tuning service's packing, checkpoints and memory) runs
first, before any server is started, so nothing of ours competes with it for
the CPU; then the gateway's capacity and its cost over TLS, against a stand-in engine; the
gateway-overhead, hand-off, canary and soak benchmarks share one vLLM (see bench.serving), the soak
last of them because it is the longest; the evaluation benchmark starts a vLLM of its own after
theirs is stopped; the isolation benchmark starts a whole appliance of its own last. The gateway benchmarks
drive wrk; without it they are reported as not run (the soak drives the openai client instead).
"""

from __future__ import annotations

import argparse
import logging
import os
import signal
import sys
import time
import traceback
from collections.abc import Callable
from pathlib import Path

if __package__ in (None, ""):  # `python bench/run.py`: make `import bench` work
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from airlock.config import REPO_ROOT  # noqa: E402
from bench.report import Section, document, split_sections  # noqa: E402
from bench.wrk import WrkMissing, wrk_path  # noqa: E402

NAMES = ("finetune", "training", "capacity", "gateway", "handoff", "isolation", "soak", "verify", "offline", "tls",
         "provision", "uploads", "eval", "demo", "canary", "replicas",
         "large_handoff")
NEEDS_WRK = ("capacity", "gateway", "isolation", "tls")
TITLES = {"finetune": "1. Fine-tuning throughput", "capacity": "2. Gateway capacity",
          "gateway": "3. Gateway overhead against direct vLLM",
          "handoff": "4. Hand-off: gate pass to first token under the alias",
          "isolation": "5. Serving beside a fine-tune",
          "soak": "6. Soak: many clients through the official openai client",
          "verify": "7. Bundle verification throughput",
          "offline": "8. Offline install of the CPU bundle",
          "tls": "9. Gateway over TLS against plain HTTP",
          "provision": "10. Provisioning this machine in containers mode",
          "training": "11. The fine-tuning service",
          "uploads": "12. Gateway memory during dataset uploads",
          "eval": "13. Evaluation through the engine",
          "demo": "14. The demo, start to snippets",
          "canary": "15. Canary: breach to roll-back",
          "replicas": "16. Replicas: two against one, and failover",
          "large_handoff": "17. Hand-off of a large adapter to every replica"}


def parse(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="python -m bench", description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="fewer repetitions and shorter runs (about 10 minutes)")
    parser.add_argument("--only", nargs="+", choices=NAMES, default=list(NAMES), help="run only these benchmarks")
    # One thread by default: the reference model's matrices are too small for a second thread to
    # help, and with two threads on a busy two-core machine OpenMP's spin-waiting slows every
    # step tenfold or more, whichever side happens to run then.
    parser.add_argument("--threads", type=int, default=1,
                        help="torch threads in this process, for both sides of the fine-tuning benchmark (default 1)")
    parser.add_argument("--soak-seconds", type=float, default=None,
                        help="seconds of load in the soak benchmark, idle gaps not counted (default 600; 30 with --quick)")
    parser.add_argument("--soak-clients", type=int, default=None, help="concurrent clients in the soak benchmark (default 64)")
    parser.add_argument("--out", type=Path, default=REPO_ROOT / "BENCHMARKS.md",
                        help="where to write the results; with --only, the other sections already there are kept")
    return parser.parse_args(argv)


def say(text: str) -> None:
    print(f"[bench {time.strftime('%H:%M:%S')}] {text}", flush=True)


def quiet_libraries() -> None:
    # Progress bars and info lines from transformers and vLLM's client side would bury the report.
    os.environ.setdefault("TRANSFORMERS_VERBOSITY", "error")
    os.environ.setdefault("HF_HUB_DISABLE_PROGRESS_BARS", "1")
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    logging.getLogger("httpx").setLevel(logging.WARNING)


def stop_cleanly() -> None:
    """SIGTERM, and SIGINT also where a shell started us in the background (it ignores SIGINT for
    its background jobs), end the run like Ctrl-C: every benchmark's clean-up stops its processes."""
    def interrupt(signum: int, _frame: object) -> None:
        raise KeyboardInterrupt(f"stopped by {signal.Signals(signum).name}")

    signal.signal(signal.SIGTERM, interrupt)
    signal.signal(signal.SIGINT, interrupt)


def main(argv: list[str] | None = None) -> int:
    args = parse(argv)
    stop_cleanly()
    quiet_libraries()
    import torch

    torch.set_num_threads(args.threads)
    threads = torch.get_num_threads()
    sections: list[Section] = []
    started = time.perf_counter()

    wanted = list(args.only)
    try:
        wrk_path()
    except WrkMissing as exc:
        skipped = [n for n in wanted if n in NEEDS_WRK]
        if skipped:
            say(f"NOT RUNNING {', '.join(skipped)}: {exc}")
        for name in skipped:
            sections.append(Section(title=TITLES[name], what="", not_run=str(exc)))
        wanted = [n for n in wanted if n not in NEEDS_WRK]

    def attempt(name: str, what: str, bench: Callable[[], Section]) -> None:
        """Run one benchmark; an error ends that one only, and is reported in its section."""
        say(what)
        try:
            section = bench()
        except Exception as exc:  # noqa: BLE001 - the other benchmarks' results must still be written
            traceback.print_exc()
            section = Section(title=TITLES[name], what="", error=f"{type(exc).__name__}: {exc}")
        sections.append(section)
        say(f"{section.title}: {section.outcome} after {time.perf_counter() - started:.0f} s in all")

    if "finetune" in wanted:
        from bench import finetune_bench

        attempt("finetune", "fine-tuning throughput: airlock's finetune.lora stage vs a plain PEFT loop",
                lambda: finetune_bench.run(args.quick))
    if "training" in wanted:
        from bench import training_bench

        attempt("training", "the fine-tuning service: packing, checkpoints, resume start-up, peak memory",
                lambda: training_bench.run(args.quick))

    if "verify" in wanted:
        from bench import verify_bench

        attempt("verify", "bundle verification: bytes hashed per second against sha256sum",
                lambda: verify_bench.run(args.quick))

    if "uploads" in wanted:
        from bench import upload_bench

        attempt("uploads", "uploads: the gateway's peak memory for dataset uploads of 1x, 4x and 16x a base size",
                lambda: upload_bench.run(args.quick))

    if "offline" in wanted:
        from bench import offline_bench

        attempt("offline", "offline install: the CPU bundle built, then installed inside unshare -n",
                lambda: offline_bench.run(args.quick))

    if "provision" in wanted:
        from bench import provision_bench

        attempt("provision", "provisioning: site.yml against localhost in containers mode, first and second run",
                lambda: provision_bench.run(args.quick))

    if "capacity" in wanted:
        from bench import capacity_bench

        attempt("capacity", "gateway capacity: requests per second per gateway core, stand-in engine on the engine socket",
                lambda: capacity_bench.run(args.quick))

    if "tls" in wanted:
        from bench import tls_bench

        attempt("tls", "TLS: the same gateway over HTTPS and over plain HTTP, stand-in engine on the engine socket",
                lambda: tls_bench.run(args.quick))

    serving = [n for n in ("gateway", "handoff", "canary", "soak") if n in wanted]
    if serving:
        from bench import canary_bench, gateway_bench, handoff_bench, soak_bench
        from bench.serving import serving_stack

        # The soak serves the first hand-off candidate; alone it trains just that one.
        prepare = (handoff_bench.train_candidates if "handoff" in serving or "canary" in serving
                   else soak_bench.prepare if "soak" in serving else None)
        say("starting vLLM and the gateway" + (" (training adapters meanwhile)" if prepare else ""))
        try:
            with serving_stack(prepare) as stack:
                say(f"serving stack ready after {stack.boot_seconds:.0f} s")
                if "gateway" in serving:
                    attempt("gateway", "gateway overhead: through the gateway vs straight to vLLM (wrk)",
                            lambda: gateway_bench.run(stack, args.quick))
                if "handoff" in serving:
                    attempt("handoff", "hand-off: gate pass to first token under the alias",
                            lambda: handoff_bench.run(stack, args.quick))
                if "canary" in serving:
                    attempt("canary", "canary: from a real breach to the roll-back, against an admin's abort",
                            lambda: canary_bench.run(stack, args.quick))
                if "soak" in serving:
                    attempt("soak", "soak: concurrent openai clients through the gateway, counting every error",
                            lambda: soak_bench.run(stack, args.quick, args.soak_seconds,
                                                   args.soak_clients or soak_bench.CLIENTS))
        except Exception as exc:  # noqa: BLE001 - vLLM did not start: say so in each section
            traceback.print_exc()
            done = {s.title for s in sections}
            sections.extend(Section(title=TITLES[n], what="", error=f"the serving stack failed: {exc}")
                            for n in serving if TITLES[n] not in done)

    if "eval" in wanted:
        from bench import eval_bench

        attempt("eval", "evaluation: the gate's scores through vLLM against the in-process loop, base + candidate",
                lambda: eval_bench.run(args.quick))
    if "demo" in wanted:
        from bench import demo_bench

        attempt("demo", "the demo: airlock demo --exit on smollm2-135m-instruct against --model airlock-tiny",
                lambda: demo_bench.run(args.quick))

    if "isolation" in wanted:
        from bench import isolation_bench

        attempt("isolation", "isolation: chat latency while the worker fine-tunes, against idle (airlock up)",
                lambda: isolation_bench.run(args.quick))

    if "replicas" in wanted:
        from bench import replicas_bench

        attempt("replicas", "replicas: two against one at 16 and 64 in flight, then kill -9 of one under load",
                lambda: replicas_bench.run(args.quick))
    if "large_handoff" in wanted:
        from bench import large_handoff_bench

        attempt("large_handoff", "hand-off of a rank-256 adapter of the instruct model to each of two replicas",
                lambda: large_handoff_bench.run(args.quick))

    command = "python -m bench" + (" --quick" if args.quick else "")
    if args.soak_seconds is not None:
        command += f" --soak-seconds {args.soak_seconds:g}"
    if args.soak_clients is not None:
        command += f" --soak-clients {args.soak_clients}"
    kept = None
    if set(args.only) != set(NAMES):
        command += " --only " + " ".join(args.only)
        # A subset re-run replaces its own sections and keeps the others from the last run.
        kept = split_sections(args.out.read_text()) if args.out.exists() else None
    for section in sections:
        section.command = command
    args.out.write_text(document(sections, threads, command, kept))
    say(f"wrote {args.out} after {time.perf_counter() - started:.0f} s")
    for s in sections:
        say(f"{s.title}: {s.outcome}")
    return 1 if any(s.outcome in ("NOT RUN", "ERROR") for s in sections) else 0


if __name__ == "__main__":
    raise SystemExit(main())

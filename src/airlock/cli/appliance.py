"""`airlock up/down/status/demo` and the three services `airlock engine/worker/gateway`."""

from __future__ import annotations

import signal
import threading
from pathlib import Path

import typer

from airlock.cli.common import cli_actor, command, console, open_airlock, print_json
from airlock.config import REPO_ROOT, get_settings
from airlock.private import private_umask

QUICKSTART = REPO_ROOT / "examples" / "quickstart.yaml"
# The demo's base model by default: the real instruct model that ships with airlock (docs/models.md).
DEMO_MODEL = "smollm2-135m-instruct"
# The quickstart workflow tuned for each model; any other model runs quickstart.yaml on itself.
DEMO_WORKFLOWS = {DEMO_MODEL: REPO_ROOT / "examples" / "quickstart-smollm2.yaml", "airlock-tiny": QUICKSTART}
GENERAL_QUESTION = "What is the capital of France?"


def _say(text: str) -> None:
    console.print(f"[cyan]airlock[/] {text}", highlight=False, soft_wrap=True)


def _on_stop_signals(event: threading.Event) -> None:
    for sig in (signal.SIGINT, signal.SIGTERM):
        signal.signal(sig, lambda *_: event.set())


@command
def up() -> None:
    """Start and supervise the engine (vLLM), the worker and the gateway; Ctrl-C stops all three."""
    from airlock.supervisor.supervisor import Supervisor

    private_umask()  # the supervisor and the services it starts: an owner-only home
    supervisor = Supervisor(get_settings(), on_status=_say)
    _on_stop_signals(supervisor.stop_requested)
    try:
        supervisor.start()
        if supervisor.wait_ready():
            _say("Ctrl-C (or `airlock down`) stops")
            supervisor.run()
    finally:
        supervisor.stop()


@command
def down(timeout: float = typer.Option(90.0, help="Seconds to wait for the appliance to stop.")) -> None:
    """Stop the appliance that `airlock up` (or `airlock demo`) runs for this AIRLOCK_HOME."""
    import os
    import time

    from airlock.errors import NotReady
    from airlock.home import appliance_pid

    settings = get_settings()
    pid = appliance_pid(settings)  # the lock's holder, never a stale pid file
    if pid is None:
        _say("no appliance is running")
        return
    os.kill(pid, signal.SIGTERM)
    deadline = time.monotonic() + timeout
    while appliance_pid(settings) is not None:
        if time.monotonic() > deadline:
            raise NotReady(f"appliance pid {pid} did not stop within {timeout:.0f} s")
        time.sleep(0.2)
    _say(f"stopped (pid {pid})")


@command
def status(json_out: bool = typer.Option(False, "--json", help="Print the status as JSON.")) -> None:
    """Show whether the appliance runs, and each service's state, pid, restarts and last exit; each
    engine replica's model, health, load (requests running and waiting, KV-cache use) and adapters;
    and the failed authentications of the last hour (from the audit log)."""
    from airlock.access.failures import recent_failures
    from airlock.meta import open_meta
    from airlock.serve.fleet_status import replica_status
    from airlock.supervisor.supervisor import read_status

    settings = get_settings()
    state = read_status(settings)
    state["auth_failures"] = recent_failures(open_meta(settings.db_path))
    state["engines"] = [replica.as_dict() for replica in replica_status(settings)]
    if json_out:
        return print_json(state)
    from rich.table import Table

    console.print(f"appliance pid {state['pid']} on {state['home']}, gateway {state.get('gateway_url', '?')}")
    table = Table("service", "state", "pid", "restarts", "last exit")
    for name, s in state["services"].items():
        table.add_row(name, s["state"], str(s["pid"] or ""), str(s["restarts"]), s["last_exit"] or "")
    console.print(table)
    engines = Table("engine replica", "model", "health", "running", "waiting", "KV cache", "adapters")
    for r in state["engines"]:
        engines.add_row(r["replica"] + (f" @ {r['host']}" if r["host"] else ""), r["model"], r["health"],
                        *(_figure(r[k]) for k in ("running", "waiting")),
                        "" if r["kv_cache_use"] is None else f"{r['kv_cache_use']:.0%}", _figure(r["adapters"]))
    console.print(engines)
    console.print(failures_line(state["auth_failures"]))


def _figure(value: float | None) -> str:
    return "" if value is None else f"{value:g}"


def failures_line(failures: dict) -> str:
    if not failures["failures"]:
        return f"failed authentications in the last {failures['hours']:g} h: none"
    top = ", ".join(f"{t['address']} ({t['failures']})" for t in failures["top"])
    return (f"failed authentications in the last {failures['hours']:g} h: {failures['failures']} from "
            f"{failures['addresses']} address(es), most from {top}; last at {failures['last_at']} "
            "(`airlock audit list --action auth.failed` lists them)")


@command
def engine() -> None:
    """Run the engine service alone: vLLM on the private socket, with a new secret (foreground)."""
    from airlock.serve.vllm_server import VllmServer

    private_umask()  # vLLM writes its own files too: owner-only
    settings = get_settings()
    settings.ensure_dirs()
    VllmServer(settings).exec_engine()


@command
def worker(
    check: bool = typer.Option(False, "--check", help="Run no worker: exit 0 if a worker of this home is alive "
                               "(a recent heartbeat from a live process), 1 if not; a container's health check."),
) -> None:
    """Run the worker service alone: executes queued runs and keeps aliases loaded (foreground)."""
    import logging

    from airlock.workflow.worker import live_worker_in, serve_worker

    private_umask()
    if check:
        from airlock.meta import open_meta

        # The database alone: a health check must not depend on the artifact store being up.
        alive = live_worker_in(open_meta(get_settings().db_path))
        typer.echo("alive" if alive else "no live worker")
        raise typer.Exit(0 if alive else 1)

    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s %(levelname)s %(message)s")
    serve_worker(open_airlock())


@command
def gateway() -> None:
    """Run the gateway service alone: the OpenAI API, the control API, the web UI and probes
    (foreground)."""
    from airlock.gateway.app import serve_gateway
    from airlock.web import install

    private_umask()
    serve_gateway(get_settings(), log_level="warning", ui=install)


def snippets(gateway_url: str, alias: str, key: str, cafile: Path | None = None, *,
             base_model: str | None = None) -> str:
    """curl and openai lines to call the alias; with `cafile` (a self-signed gateway certificate)
    both trust that certificate rather than switching verification off. With `base_model`, a
    third snippet asks the base model a general question the fine-tune did not teach."""
    question = "What port does the airlock gateway listen on?"
    curl_ca = f" --cacert {cafile}" if cafile else ""
    imports = "import ssl\nimport httpx\n" if cafile else ""
    client_tls = (f", http_client=httpx.Client(verify=ssl.create_default_context(cafile=\"{cafile}\"))"
                  if cafile else "")
    return f"""
[bold]curl[/]
curl -s{curl_ca} {gateway_url}/v1/chat/completions \\
  -H "Authorization: Bearer {key}" -H "Content-Type: application/json" \\
  -d '{{"model": "{alias}", "messages": [{{"role": "system", "content": "You are the airlock assistant."}}, {{"role": "user", "content": "{question}"}}], "temperature": 0}}'

[bold]Python (openai)[/]
{imports}from openai import OpenAI
client = OpenAI(base_url="{gateway_url}/v1", api_key="{key}"{client_tls})
reply = client.chat.completions.create(model="{alias}", temperature=0, messages=[
    {{"role": "system", "content": "You are the airlock assistant."}},
    {{"role": "user", "content": "{question}"}}])
print(reply.choices[0].message.content)
""" + (_base_snippet(gateway_url, base_model, key, curl_ca) if base_model else "")


def _base_snippet(gateway_url: str, base_model: str, key: str, curl_ca: str) -> str:
    return f"""
[bold]the base model, on a general question[/]
curl -s{curl_ca} {gateway_url}/v1/chat/completions \\
  -H "Authorization: Bearer {key}" -H "Content-Type: application/json" \\
  -d '{{"model": "{base_model}", "messages": [{{"role": "user", "content": "{GENERAL_QUESTION}"}}], "temperature": 0}}'
"""


@command
def demo(
    workflow_file: Path = typer.Option(None, "--workflow", show_default=False,
                                       help="The workflow to run (default: the quickstart for MODEL, "
                                            "examples/quickstart-smollm2.yaml or examples/quickstart.yaml)."),
    set_: list[str] = typer.Option([], "--set", help="Override a workflow value: KEY=VALUE. Repeatable."),
    exit_after: bool = typer.Option(False, "--exit", help="Stop the appliance once the demo has printed its snippets."),
    model: str = typer.Option(None, "--model", show_default=False,
                              help="The base model to fine-tune and serve (default: the --workflow's base_model, "
                                   f"else the shipped {DEMO_MODEL}); airlock-tiny is the fast path (seconds, "
                                   "but its answers are noise)."),
) -> None:
    """Start the appliance serving MODEL, run the quickstart workflow on it, and print an API key and
    snippets to call the fine-tuned alias and the base model, and the web UI's address with a
    trainer key to sign in with. An appliance already running must serve MODEL."""
    from airlock.access.holders import OPERATOR
    from airlock.access.keys import create_key
    from airlock.cli.workflow import follow
    from airlock.errors import StageFailed
    from airlock.home import appliance_pid
    from airlock.states import RunState
    from airlock.supervisor.supervisor import Supervisor
    from airlock.tls import check_configured, local_gateway
    from airlock.workflow.submit import submit

    if model is None:
        model = _base_model_of(workflow_file) if workflow_file else DEMO_MODEL
    workflow_file = workflow_file or DEMO_WORKFLOWS.get(model, QUICKSTART)
    set_ = [f"base_model={model}", *set_]
    private_umask()
    settings = _serving(model)
    supervisor = None
    if appliance_pid(settings) is None:
        supervisor = Supervisor(settings, on_status=_say)
        _on_stop_signals(supervisor.stop_requested)
        supervisor.start()
        threading.Thread(target=supervisor.run, name="airlock-supervisor", daemon=True).start()
    try:
        airlock = open_airlock()
        _unprotected_for_the_demo(airlock, workflow_file)
        run_id = submit(airlock, workflow_file, set_, actor=cli_actor())["run_id"]
        _say(f"running workflow {workflow_file.name} as {run_id}")
        run = follow(airlock, run_id, stop=supervisor.stop_requested if supervisor else None)
        if run["status"] != RunState.SUCCEEDED:
            raise StageFailed(f"run {run_id} {run['status']}: {run['error']}")
        alias = next(s["outputs"]["alias"] for s in run["stages"] if s["uses"] == "serve.vllm")
        _, key = create_key(airlock.meta, f"demo-{run_id}", role="inference", models=[alias, model],
                            actor=cli_actor())
        url, cafile = local_gateway(settings).client_url, None
        if settings.tls_enabled and check_configured(settings).self_signed:
            cafile = settings.tls_cert
        _say(f"[green]serving alias [bold]{alias}[/bold] at {url}/v1[/]")
        _say(f"API key for {alias} and {model} (inference only, shown once): [bold]{key}[/]")
        console.print(snippets(url, alias, key, cafile, base_model=model), highlight=False, soft_wrap=True)
        # The person at the demo is the operator who just added the quickstart's datasets: the web
        # key holds the operator's namespace, so the web UI shows them and can train on them again.
        _, trainer = create_key(airlock.meta, f"demo-web-{run_id}", role="trainer", actor=cli_actor(), holder=OPERATOR)
        _say(f"web UI: [bold]{url}/[/] (sign in with this trainer key, shown once: [bold]{trainer}[/]; "
             f"the playground asks [bold]{alias}[/] and its base model side by side)")
        if supervisor and not exit_after:
            _say("serving; Ctrl-C (or `airlock down`) stops")
            supervisor.stop_requested.wait()
    finally:
        if supervisor:
            supervisor.stop()


def _base_model_of(workflow_file: Path) -> str:
    """The workflow's base_model, read as submitting it will (a bad file is named there)."""
    from airlock.workflow.spec import load_raw

    return str(load_raw(workflow_file).get("base_model") or DEMO_MODEL)


def _serving(model: str):
    """The settings of an appliance that serves `model`: the engine serves one base model
    (AIRLOCK_SERVE_BASE_MODEL), so the demo starts one serving it, or refuses to use a running
    appliance that serves another."""
    import os

    from airlock.errors import Conflict, NotFound
    from airlock.home import appliance_pid
    from airlock.models.catalog import resolve_base_model
    from airlock.supervisor.supervisor import read_status

    settings = get_settings()
    try:  # a missing model is named with the installed ones, before anything starts
        resolve_base_model(settings, model)
    except NotFound as exc:
        if model != DEMO_MODEL:
            raise
        raise NotFound(f"{exc.message}. ./install.sh converts it (or `airlock models build-shipped`); "
                       "`airlock demo --model airlock-tiny` runs the fast path without it") from None
    if appliance_pid(settings) is not None:
        served = read_status(settings).get("serve_base_model", settings.serve_base_model)
        if served != model:
            raise Conflict(f"the appliance running on {settings.home} serves base model {served!r}, and the demo "
                           f"asks for {model!r}: stop it (`airlock down`) or run `airlock demo --model {served}`; "
                           "the served base model is the setting AIRLOCK_SERVE_BASE_MODEL")
        return settings
    # The supervisor's services inherit this process's environment, the engine among them.
    os.environ["AIRLOCK_SERVE_BASE_MODEL"] = model
    return get_settings()


def _unprotected_for_the_demo(airlock, workflow_file: Path) -> None:
    """The demo goes from dataset to served alias in one command, so its alias asks no approvals:
    set explicitly, said aloud, with how to protect it. An alias that already has a policy keeps it."""
    import yaml

    from airlock.access.holders import OPERATOR
    from airlock.promotion.policy import policy_for, set_policy

    stages = (yaml.safe_load(workflow_file.read_text()) or {}).get("stages") or []
    for stage in stages:
        alias = (stage.get("with") or {}).get("alias") if stage.get("uses") == "serve.vllm" else None
        if alias and policy_for(airlock, alias) is None:
            set_policy(airlock, alias, {"approvals": 0}, actor=cli_actor(), holder=OPERATOR)
            _say(f"[yellow]alias {alias} is UNPROTECTED for the demo (no approvals: a development setting); "
                 f"protect it with `airlock gate policy set {alias} --eval-set DATASET --approvals 2`[/]")


def register(app: typer.Typer) -> None:
    for fn in (up, down, status, demo, engine, worker, gateway):
        app.command(fn.__name__)(fn)

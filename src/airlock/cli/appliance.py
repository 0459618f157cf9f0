"""`airlock up`, `airlock down` and `airlock demo`: run the appliance on this host."""

from __future__ import annotations

from pathlib import Path

import typer

from airlock.cli.common import command, console, open_airlock
from airlock.config import REPO_ROOT, get_settings

QUICKSTART = REPO_ROOT / "examples" / "quickstart.yaml"


def _say(text: str) -> None:
    console.print(f"[cyan]airlock[/] {text}", highlight=False, soft_wrap=True)


@command
def up() -> None:
    """Start the gateway, the worker and vLLM on this host; Ctrl-C stops all of them."""
    from airlock.appliance import Appliance

    appliance = Appliance(get_settings(), on_status=_say)
    try:
        appliance.start()
        appliance.wait_vllm()
        _say("ready; Ctrl-C (or `airlock down`) stops")
    except BaseException:
        appliance.stop()
        raise
    appliance.serve_forever()


@command
def down() -> None:
    """Stop the appliance that `airlock up` (or `airlock demo`) runs for this AIRLOCK_HOME."""
    from airlock.appliance import stop_running

    pid = stop_running(get_settings())
    _say("no appliance is running" if pid is None else f"stopped (pid {pid})")


def snippets(gateway_url: str, alias: str, key: str) -> str:
    question = "What port does the airlock gateway listen on?"
    return f"""
[bold]curl[/]
curl -s {gateway_url}/v1/chat/completions \\
  -H "Authorization: Bearer {key}" -H "Content-Type: application/json" \\
  -d '{{"model": "{alias}", "messages": [{{"role": "system", "content": "You are the airlock assistant."}}, {{"role": "user", "content": "{question}"}}], "temperature": 0}}'

[bold]Python (openai)[/]
from openai import OpenAI
client = OpenAI(base_url="{gateway_url}/v1", api_key="{key}")
reply = client.chat.completions.create(model="{alias}", temperature=0, messages=[
    {{"role": "system", "content": "You are the airlock assistant."}},
    {{"role": "user", "content": "{question}"}}])
print(reply.choices[0].message.content)
"""


@command
def demo(
    workflow_file: Path = typer.Option(None, "--workflow", show_default=False,
                                       help="The workflow to run (default: examples/quickstart.yaml)."),
    set_: list[str] = typer.Option([], "--set", help="Override a workflow value: KEY=VALUE. Repeatable."),
    exit_after: bool = typer.Option(False, "--exit", help="Stop the appliance once the demo has printed its snippets."),
) -> None:
    """Start the appliance, run the quickstart workflow, and print an API key and snippets to call it."""
    from airlock.appliance import Appliance, running_pid
    from airlock.cli.workflow import follow
    from airlock.errors import StageFailed
    from airlock.gateway.apikeys import create_key
    from airlock.workflow.submit import submit

    workflow_file = workflow_file or QUICKSTART
    settings = get_settings()
    appliance = None
    if running_pid(settings) is None:
        appliance = Appliance(settings, on_status=_say)
        appliance.start()
    try:
        airlock = open_airlock()
        run_id = submit(airlock, workflow_file, set_)["run_id"]
        _say(f"running workflow {workflow_file.name} as {run_id}")
        if appliance:
            appliance.wait_vllm()
        run = follow(airlock, run_id)
        if run["status"] != "succeeded":
            raise StageFailed(f"run {run_id} failed: {run['error']}")
        alias = next(s["outputs"]["alias"] for s in run["stages"] if s["uses"] == "serve.vllm")
        _, key = create_key(airlock.meta, f"demo-{run_id}")
        _say(f"[green]serving alias [bold]{alias}[/bold] at {settings.gateway_url}/v1[/]")
        _say(f"API key (shown once): [bold]{key}[/]")
        console.print(snippets(settings.gateway_url, alias, key), highlight=False, soft_wrap=True)
    except BaseException:
        if appliance:
            appliance.stop()
        raise
    if appliance and not exit_after:
        _say("serving; Ctrl-C (or `airlock down`) stops")
        appliance.serve_forever()
    elif appliance:
        appliance.stop()


def register(app: typer.Typer) -> None:
    app.command("up")(up)
    app.command("down")(down)
    app.command("demo")(demo)

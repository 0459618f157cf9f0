"""`airlock workflow ...`: submit, follow and inspect workflow runs."""

from __future__ import annotations

import threading
import time
from pathlib import Path

import typer
from rich.progress import BarColumn, Progress, TextColumn, TimeElapsedColumn, TimeRemainingColumn
from rich.table import Table

from airlock.cli.common import cli_actor, command, console, open_airlock, print_json

app = typer.Typer(no_args_is_help=True)


def follow(airlock, run_id: str, stop: threading.Event | None = None) -> dict:
    """Live progress of every stage until the run finishes; returns the final run.

    A set `stop` event (Ctrl-C or SIGTERM while the demo follows its run) ends the wait."""
    from airlock.states import RUN_FINISHED, STAGE_FINISHED
    from airlock.workflow.runs import get_run

    columns = (TextColumn("{task.description:<24}"), BarColumn(), TextColumn("{task.fields[info]}"), TimeElapsedColumn(),
               TextColumn("left"), TimeRemainingColumn())
    with Progress(*columns, console=console, transient=False) as bars:
        tasks = {}
        while True:
            run = get_run(airlock, run_id)
            for stage in run["stages"]:
                if stage["name"] not in tasks:
                    tasks[stage["name"]] = bars.add_task(f"{stage['name']} ({stage['uses']})", total=None, info="")
                task, p = tasks[stage["name"]], stage["progress"] or {}
                info = stage["status"] + (" (cached)" if stage["skipped"] else "")
                if "loss" in p:
                    info += f"  step {p['step']}/{p['total']}  loss {p['loss']:.4f}"
                if stage["status"] in STAGE_FINISHED:
                    bars.update(task, total=1, completed=1, info=info)
                elif "total" in p:
                    bars.update(task, total=p["total"], completed=p["step"], info=info)
                else:
                    bars.update(task, info=info)
            if run["status"] in RUN_FINISHED:
                return run
            if stop is not None and stop.wait(0.3):
                raise typer.Exit(130)
            if stop is None:
                time.sleep(0.3)


@app.command("run")
@command
def run_cmd(
    file: Path = typer.Argument(..., help="The workflow YAML file."),
    set_: list[str] = typer.Option([], "--set", help="Override a value: KEY=VALUE (dataset, base_model, name, "
                                   "a stage parameter such as eval_set or alias, or STAGE.PARAM). Repeatable."),
    wait: bool = typer.Option(False, "--wait", help="Follow the run with live progress until it finishes."),
    json_out: bool = typer.Option(False, "--json", help="Print the result as JSON."),
) -> None:
    """Check a workflow completely, queue it, and (with --wait) follow it to the end.

    The running appliance's worker executes the run; with --wait and no appliance up, the stages
    run in this process instead.
    """
    from airlock.errors import StageFailed
    from airlock.states import RunState
    from airlock.workflow.submit import submit
    from airlock.workflow.worker import Worker, worker_alive

    airlock = open_airlock()
    queued = submit(airlock, file, set_, actor=cli_actor())
    run_id = queued["run_id"]
    if not wait:
        if not worker_alive(airlock):
            console.print("[yellow]queued, but no worker is running: start the appliance with `airlock up`[/]")
        print_json(queued) if json_out else console.print(f"queued {run_id}")
        return
    if not worker_alive(airlock):
        threading.Thread(target=Worker(airlock).run_one, args=(run_id,), daemon=True).start()
    run = follow(airlock, run_id) if not json_out else _wait_quietly(airlock, run_id)
    if json_out:
        print_json(run)
    if run["status"] != RunState.SUCCEEDED:
        raise StageFailed(f"run {run_id} {run['status']}: {run['error']}")
    if json_out:
        return
    console.print(f"[green]run {run_id} succeeded[/]")
    serve = next((s for s in run["stages"] if s["uses"] == "serve.vllm"), None)
    if serve and serve["outputs"]:
        console.print(f"serving: alias [bold]{serve['outputs']['alias']}[/] -> {serve['outputs']['model_id']}")


def _wait_quietly(airlock, run_id: str) -> dict:
    from airlock.states import RUN_FINISHED
    from airlock.workflow.runs import get_run

    while (run := get_run(airlock, run_id))["status"] not in RUN_FINISHED:
        time.sleep(0.3)
    return run


@app.command("status")
@command
def status_cmd(
    run_id: str = typer.Argument(..., help="The run id (see `airlock workflow list`)."),
    json_out: bool = typer.Option(False, "--json", help="Print JSON."),
) -> None:
    """Show a run: its stages, their state, timings, and the artifacts each used and produced."""
    from airlock.workflow.runs import get_run

    run = get_run(open_airlock(), run_id)
    if json_out:
        return print_json(run)
    console.print(f"[bold]{run['id']}[/] {run['workflow']}: {run['status']}")
    if run["error"]:
        console.print(f"[red]{run['error']}[/]")
    table = Table("stage", "uses", "status", "started", "finished", "outputs")
    for s in run["stages"]:
        outputs = ", ".join(f"{k}={v}" for k, v in (s["outputs"] or {}).items() if not isinstance(v, dict))
        status = s["status"] + (" (cached)" if s["skipped"] else "")
        table.add_row(s["name"], s["uses"], status, s["started_at"] or "", s["finished_at"] or "", outputs)
    console.print(table)


@app.command("list")
@command
def list_cmd(json_out: bool = typer.Option(False, "--json", help="Print JSON.")) -> None:
    """List recent runs, newest first."""
    from airlock.workflow.runs import list_runs

    runs = list_runs(open_airlock())
    if json_out:
        return print_json(runs)
    table = Table("run", "workflow", "status", "created", "finished")
    for r in runs:
        table.add_row(r["id"], r["workflow"], r["status"], r["created_at"], r["finished_at"] or "")
    console.print(table)

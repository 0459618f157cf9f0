"""`airlock runs ...`: the training queue: list, show, watch, cancel, reprioritise, resume."""

from __future__ import annotations

import typer
from rich.table import Table

from airlock.cli.common import cli_actor, command, console, open_airlock, print_json

app = typer.Typer(no_args_is_help=True)
RUN_ID = typer.Argument(..., help="The run id (see `airlock runs list`).")
JSON = typer.Option(False, "--json", help="Print JSON.")


def _operator():
    from airlock.workflow.queue import operator

    return operator(cli_actor())


@app.command("list")
@command
def list_cmd(
    state: list[str] = typer.Option([], "--state", help="Only runs in this state (queued, running, succeeded, "
                                    "failed, cancelled, interrupted). Repeatable."),
    limit: int = typer.Option(50, "--limit", help="At most this many runs, newest first."),
    json_out: bool = JSON,
) -> None:
    """The queue and recent runs: state, priority, queue position, owner."""
    from airlock.workflow.queue import list_queue

    runs = list_queue(open_airlock(), _operator(), states=state or None, limit=limit)
    if json_out:
        return print_json(runs)
    table = Table("run", "workflow", "state", "priority", "position", "owner", "created")
    for r in runs:
        table.add_row(r["id"], r["workflow"], r["status"], r["priority_name"], str(r["position"] or ""),
                      r["owner"] or "", r["created_at"])
    console.print(table)


@app.command("show")
@command
def show_cmd(run_id: str = RUN_ID, json_out: bool = JSON) -> None:
    """A run: state, priority, position, stages with timings, checkpoints, and why it stopped."""
    from airlock.workflow.queue import show_run

    run = show_run(open_airlock(), _operator(), run_id)
    if json_out:
        return print_json(run)
    position = f", position {run['position']} in the queue" if run["position"] else ""
    console.print(f"[bold]{run['id']}[/] {run['workflow']}: {run['status']} (priority {run['priority_name']}"
                  f"{position}), owner {run['owner']}, attempt {run['attempts']}")
    for line in filter(None, (run["notice"], run["error"])):
        console.print(line, highlight=False)
    table = Table("stage", "uses", "status", "progress", "started", "finished")
    for s in run["stages"]:
        p = s["progress"] or {}
        progress = f"step {p['step']}/{p['total']} loss {p['loss']:.4f}" if "step" in p else ""
        table.add_row(s["name"], s["uses"], s["status"], progress, s["started_at"] or "", s["finished_at"] or "")
    console.print(table)
    for c in run["checkpoints"]:
        console.print(f"checkpoint {c['stage']} step {c['step']}: {c['bytes']} bytes, {c['written_at']}")


@app.command("watch")
@command
def watch_cmd(run_id: str = RUN_ID) -> None:
    """Follow a run live: a progress bar per stage with step, loss and time left, to its end."""
    from airlock.cli.workflow import follow
    from airlock.workflow.queue import show_run

    airlock = open_airlock()
    show_run(airlock, _operator(), run_id)  # a clear error for an unknown run
    run = follow(airlock, run_id)
    console.print(f"run {run_id} {run['status']}" + (f": {run['error']}" if run["error"] else ""), highlight=False)


@app.command("cancel")
@command
def cancel_cmd(run_id: str = RUN_ID, json_out: bool = JSON) -> None:
    """Cancel a run: a queued one at once, a running one at its next step, after a checkpoint."""
    from airlock.workflow.queue import cancel_run

    out = cancel_run(open_airlock(), _operator(), run_id)
    print_json(out) if json_out else console.print(f"{run_id}: {out['status']}")


@app.command("priority")
@command
def priority_cmd(
    run_id: str = RUN_ID,
    priority: str = typer.Argument(..., help="low, normal, high, or a whole number from 0 to 1000."),
    json_out: bool = JSON,
) -> None:
    """Change a run's priority; a waiting run of higher priority preempts lower running ones."""
    from airlock.workflow.queue import set_priority

    out = set_priority(open_airlock(), _operator(), run_id, priority)
    if json_out:
        return print_json(out)
    position = f", position {out['position']} in the queue" if out["position"] else ""
    console.print(f"{run_id}: priority {out['priority_name']}{position}")


@app.command("resume")
@command
def resume_cmd(
    run_id: str = RUN_ID,
    time_limit: str = typer.Option(None, "--time-limit", help="A new time limit (90s, 30m, 2h)."),
    json_out: bool = JSON,
) -> None:
    """Queue a cancelled, failed or interrupted run again; training continues from its last checkpoint."""
    from airlock.workflow.queue import resume_run

    out = resume_run(open_airlock(), _operator(), run_id, time_limit=time_limit)
    print_json(out) if json_out else console.print(f"{run_id}: queued again (position {out['position']})")

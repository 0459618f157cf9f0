"""`airlock audit ...` commands: thin adapters over meta/audit.py."""

from __future__ import annotations

import json
import sys
from pathlib import Path

import typer

from airlock.cli.common import command, console, open_airlock, print_json
from airlock.errors import IntegrityFailure, InvalidInput

app = typer.Typer(
    no_args_is_help=True,
    help="The audit log: every change with its actor, chained by hash so an edit or deletion shows.",
)


@app.command("verify")
@command
def verify_cmd(
    json_out: bool = typer.Option(False, "--json", help="Print the report as JSON: ok, rows, head_id, "
                                                        "head_hash and every problem."),
    head: str | None = typer.Option(None, "--head", help="A head hash recorded earlier and kept off this "
                                                         "host: fail unless it is still in the chain."),
) -> None:
    """Check the audit chain and its signed anchors; exit 5 naming the first edited, inserted or
    deleted row, the missing range when the newest rows are gone, and any edited anchor line.

    Prints the row count and the head hash when the log is intact. The anchors (AIRLOCK_AUDIT_ANCHORS,
    and syslog where AIRLOCK_AUDIT_SYSLOG is set) keep each head outside the database; --head checks
    a head hash kept off this host as well.
    """
    from airlock.meta.audit import verify_anchored

    report = verify_anchored(open_airlock().meta, head=head)
    if json_out:
        print_json(report.as_dict())
    elif report.ok:
        typer.echo(report.summary())
    if not report.ok:
        count = len(report.problems)
        raise IntegrityFailure(
            f"the audit log was tampered with: {count} problem{'s' if count > 1 else ''}, the first first",
            problems=[p.message for p in report.problems],
        )


@app.command("export")
@command
def export_cmd(
    since: str | None = typer.Option(None, "--since", help="Only rows from this row id on (a number), or at "
                                                           "or after this ISO date or date/time (UTC unless "
                                                           "it names a zone)."),
    output: Path | None = typer.Option(None, "--output", "-o", help="Append the lines to this file instead of "
                                                                    "writing them to stdout."),
) -> None:
    """Write audit rows, oldest first, as JSON lines for a SIEM: one object per row, hashes included."""
    from contextlib import nullcontext

    from airlock.meta.audit import iter_rows

    rows = iter_rows(open_airlock().meta, since=since)  # checks --since before anything is written
    try:
        sink = output.open("a", encoding="utf-8") if output else nullcontext(sys.stdout)
    except OSError as exc:
        raise InvalidInput(f"cannot write {output}: {exc.strerror}") from None
    count = 0
    with sink as out:
        for count, row in enumerate(rows, 1):
            out.write(json.dumps(row, sort_keys=True) + "\n")
    if output:
        typer.echo(f"wrote {count} audit rows to {output}", err=True)


@app.command("list")
@command
def list_cmd(
    actor: str | None = typer.Option(None, "--actor", help="Only rows by this actor: os:USER, "
                                                           "key:ID, worker or supervisor."),
    action: str | None = typer.Option(None, "--action", help="Only this action (apikey.create), or a "
                                                             "prefix ending in a dot (apikey.)."),
    since: str | None = typer.Option(None, "--since", help="Only rows at or after this ISO date or "
                                                           "date/time (UTC unless it names a zone)."),
    until: str | None = typer.Option(None, "--until", help="Only rows before this ISO date/time; a bare "
                                                           "date includes that whole day."),
    limit: int | None = typer.Option(None, "--limit", min=1, help="Only the newest N matching rows."),
    jsonl: bool = typer.Option(False, "--jsonl", help="Export one JSON object per line, hashes included."),
    output: Path | None = typer.Option(None, "--output", "-o", help="Write the JSON lines to this file "
                                                                    "instead of stdout (implies --jsonl)."),
) -> None:
    """List audit rows, oldest first, as a table or as JSON lines for export."""
    from airlock.meta.audit import list_rows

    rows = list_rows(open_airlock().meta, actor=actor, action=action, since=since, until=until, limit=limit)
    if jsonl or output:
        lines = "".join(json.dumps(r, sort_keys=True) + "\n" for r in rows)
        if output:
            try:
                output.write_text(lines)
            except OSError as exc:
                raise InvalidInput(f"cannot write {output}: {exc.strerror}") from None
            typer.echo(f"wrote {len(rows)} audit rows to {output}", err=True)
        else:
            sys.stdout.write(lines)
        return
    if not rows:
        typer.echo("No audit rows match.")
        return
    from rich.table import Table
    from rich.text import Text

    table = Table("id", "at", "actor", "action", "subject", "detail")
    for r in rows:
        # Text, not markup: subjects and details are whatever callers sent.
        cells = (str(r["id"]), r["at"], r["actor"], r["action"], r["subject"] or "",
                 json.dumps(r["detail"], sort_keys=True))
        table.add_row(*map(Text, cells))
    console.print(table)


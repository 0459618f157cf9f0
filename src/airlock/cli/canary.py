"""`airlock serve canary ...`: a canary rollout of a promoted candidate (serve/canary.py).

    airlock serve canary ALIAS --candidate MODEL --percent P --window 10m [--max-error-rate F]
                               [--max-latency-ratio F] [--min-requests N]
    airlock serve canary status ALIAS
    airlock serve canary abort ALIAS
"""

from __future__ import annotations

import typer

from airlock.cli.common import cli_actor, command, console, open_airlock, print_json
from airlock.errors import InvalidInput

ACTIONS = ("status", "abort")


def show(canary) -> None:
    arms = canary.arms()
    console.print(f"canary {canary.id} of [bold]{canary.candidate_id}[/] on {canary.alias} against "
                  f"{canary.champion_id}: [bold]{canary.state}[/], {canary.percent:g}% of requests, until "
                  f"{canary.ends_at}" + (f"\n  why: {canary.reason}" if canary.reason else ""))
    for side, arm in arms.items():
        p95 = "-" if arm.p95 is None else f"{arm.p95 * 1000:.0f} ms"
        console.print(f"  {side}: {arm.requests} requests, {arm.errors} failed ({arm.error_rate:.1%}), p95 {p95}")


@command
def canary_cmd(
    alias_or_action: str = typer.Argument(..., metavar="ALIAS | status ALIAS | abort ALIAS",
                                          help="The alias to start a canary on; or `status` or `abort` and the alias."),
    alias: str = typer.Argument(None, metavar="[ALIAS]", show_default=False,
                                help="With `status` or `abort`: the alias."),
    candidate: str = typer.Option(None, "--candidate", help="The model to try: it must hold a valid promotion "
                                  "record for the alias."),
    percent: float = typer.Option(None, "--percent", help="The share of the alias's requests the candidate answers, "
                                  "above 0 and below 100."),
    window: str = typer.Option("10m", "--window", help="How long to compare before promoting: 90s, 10m, 2h, 1d."),
    max_error_rate: float = typer.Option(0.01, "--max-error-rate", help="Roll back once the candidate fails more "
                                         "than this fraction of its requests (server errors, not the client's)."),
    max_latency_ratio: float = typer.Option(1.5, "--max-latency-ratio", help="Roll back once the candidate's p95 "
                                            "latency is more than this many times the champion's."),
    min_requests: int = typer.Option(20, "--min-requests", help="Answers each side needs before it is judged, and "
                                     "before the candidate may be promoted at the window's end."),
    json_out: bool = typer.Option(False, "--json", help="Print the canary as JSON."),
) -> None:
    """Send part of ALIAS's requests to a promoted candidate for a window, compare it with the champion
    on error rate and p95 latency, roll back at once on a breach, promote it at the end (admins: the
    operator on the host, or `POST /api/aliases/ALIAS/canary`). `status ALIAS` shows the newest
    canary with both sides' figures; `abort ALIAS` stops it, the champion keeps every request."""
    from airlock.serve.canary import abort_canary, canary_status, parse_window, start_canary

    airlock = open_airlock()
    if alias_or_action in ACTIONS and alias:
        canary = (canary_status(airlock, alias) if alias_or_action == "status"
                  else abort_canary(airlock, alias, actor=cli_actor()))
    elif alias:
        raise InvalidInput(f"{alias_or_action!r} is not status or abort: `airlock serve canary ALIAS --candidate "
                           "MODEL --percent P` starts one")
    else:
        if candidate is None or percent is None:
            raise InvalidInput("starting a canary takes --candidate MODEL and --percent P (or: status ALIAS, "
                               "abort ALIAS)")
        canary = start_canary(airlock, alias_or_action, candidate, percent=percent, window_s=parse_window(window),
                              max_error_rate=max_error_rate, max_latency_ratio=max_latency_ratio,
                              min_requests=min_requests, actor=cli_actor())
    if json_out:
        return print_json(canary.as_dict())
    show(canary)

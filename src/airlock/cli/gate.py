"""`airlock gate ...` and `airlock serve ...`: the promotion gate and the aliases it feeds.

Policies are set by the operator on the host (or an admin over /api). Deciding on a request
takes a person: the CLI acts as the API key in AIRLOCK_API_KEY, checked against this
appliance's keys, so an approval from a terminal counts exactly like one from the web UI.
"""

from __future__ import annotations

import os
from pathlib import Path

import typer

from airlock.cli.common import cli_actor, command, console, open_airlock, print_json
from airlock.cli.trust import PASSPHRASE_FILE, passphrase_source

app = typer.Typer(no_args_is_help=True)
policy_app = typer.Typer(no_args_is_help=True)
serve_app = typer.Typer(no_args_is_help=True)
app.add_typer(policy_app, name="policy", help="Set or show an alias's promotion policy.")


def _acting_key(airlock) -> dict:
    from airlock.access.keys import authenticate
    from airlock.errors import Unauthorized

    secret = os.environ.get("AIRLOCK_API_KEY", "").strip()
    if not secret:
        raise Unauthorized("set AIRLOCK_API_KEY to your own API key (an approver's): a decision on a promotion is "
                           "made by a person, and the key says which")
    return authenticate(airlock.meta, f"Bearer {secret}")


def _viewer(airlock):
    from airlock.promotion.requests import Viewer, viewer_from_key

    if os.environ.get("AIRLOCK_API_KEY"):
        return viewer_from_key(_acting_key(airlock))
    from airlock.access.holders import OPERATOR

    return Viewer(OPERATOR, reviewer=True)  # the operator on the host sees every request


@policy_app.command("set")
@command
def policy_set(
    alias: str = typer.Argument(..., help="The production alias the policy protects."),
    eval_set: str = typer.Option(None, "--eval-set", help="The policy's eval set: a dataset of the operator's "
                                 "(or @OWNER/NAME), shared with no one, so trainers cannot train on the test."),
    min_exact_match: float = typer.Option(None, "--min-exact-match", help="The least exact match (0-1)."),
    approvals: int = typer.Option(None, "--approvals", help="Distinct approvers needed (0: unprotected, a "
                                  "development setting)."),
    better_than_serving: bool = typer.Option(None, "--better-than-serving/--no-better-than-serving",
                                             help="The candidate must beat the serving champion by --margin."),
    better_than_base: bool = typer.Option(None, "--better-than-base/--no-better-than-base",
                                          help="The candidate must beat the base model."),
    metric: str = typer.Option(None, "--metric", help="The metric champion and challenger are compared on: "
                               "exact_match, contains or loss."),
    margin: float = typer.Option(None, "--margin", help="How much better than the champion (0-1)."),
    signed_approvals: bool = typer.Option(None, "--signed-approvals/--unsigned-approvals",
                                          help="Each approval also carries a signature by a model-role key."),
    admins_may_approve: bool = typer.Option(None, "--admins-may-approve/--approvers-only",
                                            help="Whether admins' approvals count."),
) -> None:
    """Set (a new version of) ALIAS's promotion policy; options not given keep their values.
    Pending requests under the old version are voided."""
    from airlock.access.holders import OPERATOR
    from airlock.promotion.policy import set_policy
    from airlock.serve.deploy import check_alias

    airlock = open_airlock()
    check_alias(alias, airlock.settings)
    given = {"eval_set": eval_set, "min_exact_match": min_exact_match, "approvals": approvals,
             "better_than_serving": better_than_serving, "better_than_base": better_than_base, "metric": metric,
             "margin": margin, "signed_approvals": signed_approvals, "admins_may_approve": admins_may_approve}
    row = set_policy(airlock, alias, {k: v for k, v in given.items() if v is not None}, actor=cli_actor(),
                     holder=OPERATOR)
    state = "protected" if row.policy.protected else "UNPROTECTED (development only)"
    console.print(f"[green]policy of {alias}[/] version {row.version} ({row.digest[:19]}...): {state}")


@policy_app.command("show")
@command
def policy_show(alias: str = typer.Argument(..., help="The alias.")) -> None:
    """Print ALIAS's current policy as JSON."""
    from airlock.promotion.policy import require_policy

    print_json(require_policy(open_airlock(), alias).view())


@app.command("requests")
@command
def requests_cmd(state: str = typer.Option(None, "--state", help="Only pending, approved, rejected or voided."),
                 as_json: bool = typer.Option(False, "--json", help="Print JSON.")) -> None:
    """List promotion requests (with AIRLOCK_API_KEY: those that key may see)."""
    from rich.table import Table

    from airlock.promotion.requests import list_requests

    airlock = open_airlock()
    rows = list_requests(airlock, _viewer(airlock), state=state)
    if as_json:
        print_json(rows)
        return
    table = Table("request", "alias", "staging name", "candidate", "author", "state", "approved by", "created")
    for r in rows:
        table.add_row(str(r["id"]), r["alias"], r["staging_name"], r["model_id"], r["author"], r["state"],
                      ", ".join(r["approved_by"]), r["created_at"])
    console.print(table)


@app.command("show")
@command
def show_cmd(request_id: str = typer.Argument(..., help="The request's number.")) -> None:
    """Print one request as JSON: scores of base, champion and candidate, approvals and, for
    reviewers, each example's answers side by side."""
    from airlock.promotion.requests import request_view

    airlock = open_airlock()
    print_json(request_view(airlock, _viewer(airlock), request_id))


@app.command("approve")
@command
def approve_cmd(
    request_id: str = typer.Argument(..., help="The request's number."),
    comment: str = typer.Option("", "--comment", help="What you checked."),
    key_file: Path = typer.Option(None, "--key", help="A private key file of the trust root's model role, where "
                                  "the policy asks for signed approvals.", exists=True, dir_okay=False),
    passphrase_file: Path = PASSPHRASE_FILE,
) -> None:
    """Approve a request as the key in AIRLOCK_API_KEY; the last approval the policy needs
    promotes the candidate (signed record, alias switch)."""
    _decide(request_id, "approve", comment, key_file, passphrase_file)


@app.command("reject")
@command
def reject_cmd(
    request_id: str = typer.Argument(..., help="The request's number."),
    reason: str = typer.Option(..., "--reason", help="Why; the author reads it."),
) -> None:
    """Reject a request as the key in AIRLOCK_API_KEY: one rejection ends it."""
    _decide(request_id, "reject", reason, None, None)


def _decide(request_id: str, verdict: str, comment: str, key_file: Path | None, passphrase_file: Path | None) -> None:
    from airlock.promotion.approvals import approver_from_key, bound_of, sign_approval
    from airlock.promotion.requests import get_request
    from airlock.workflow.gatekeeper import decide_and_promote

    airlock = open_airlock()
    key = _acting_key(airlock)
    signature = None
    if key_file is not None:
        from airlock.trust.keyfiles import load_signing_key

        signature = sign_approval(load_signing_key(key_file, passphrase_source(passphrase_file)),
                                  bound_of(get_request(airlock, request_id)))
    out = decide_and_promote(airlock, approver_from_key(key, f"key:{key['id']}"), request_id, verdict,
                             comment=comment, signature=signature)
    if out["state"] == "approved":
        console.print(f"[green]request {out['request']} approved: {out['alias']} now serves {out['model_id']}[/]")
    elif verdict == "reject":
        console.print(f"request {out['request']} rejected")
    else:
        console.print(f"request {out['request']}: approval recorded; still waiting: "
                      + "; ".join(out.get("waiting_for", [])))


@app.command("propose")
@command
def propose_cmd(
    model_id: str = typer.Argument(..., help="A signed adapter's id."),
    alias: str = typer.Option(..., "--alias", help="The production alias to propose it for."),
    max_length: int = typer.Option(512, "--max-length", help="Longest record of the policy's eval set, in tokens."),
) -> None:
    """Put an adapter that is already trained and signed to ALIAS's gate, as a run's serve stage
    does (the policy's evaluation, a staging name, a request); its author stays its run's."""
    from airlock.models.adapters import get_model
    from airlock.models.catalog import resolve_base_model
    from airlock.workflow.gatekeeper import propose

    airlock = open_airlock()
    model = get_model(airlock, model_id)
    out = propose(airlock, model_id=model_id, alias=alias, run_id=model["run_id"],
                  base_path=resolve_base_model(airlock.settings, model["base_model"]), max_length=max_length,
                  actor=cli_actor())
    console.print(f"request {out['request']}: {model_id} staged as [bold]{out['staging_name']}[/], {out['state']}"
                  + (f"; {out['approvals_needed']} approval(s) needed" if out["state"] == "pending" else ""))
    for note in out["notes"]:
        console.print(f"  note: {note}")


@serve_app.command("rollback")
@command
def rollback_cmd(alias: str = typer.Argument(..., help="The alias.")) -> None:
    """Serve ALIAS's previous approved champion again."""
    from airlock.workflow.gatekeeper import rollback

    out = rollback(open_airlock(), alias, actor=cli_actor())
    console.print(f"[green]alias {out['alias']} -> {out['model_id']}[/] (promotion {out['promotion_id']})")


@serve_app.command("history")
@command
def history_cmd(alias: str = typer.Argument(..., help="The alias.")) -> None:
    """Each champion ALIAS has served, newest first, with its promotion record and approvers."""
    from airlock.workflow.gatekeeper import alias_history

    print_json(alias_history(open_airlock(), alias))


def revoke_model(model_id: str, reason: str) -> None:
    from airlock.workflow.gatekeeper import revoke

    out = revoke(open_airlock(), model_id, reason, actor=cli_actor())
    console.print(f"[red]revoked {model_id}[/]")
    for alias, what in out["aliases"].items():
        console.print(f"  {alias}: {what}")
    if not out["aliases"]:
        console.print("  no alias served it")

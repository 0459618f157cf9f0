"""An installed site and its models bundles, for the models-bundle tests and attacks.

A real trust root made by the key ceremony's own code, real releases installed into a real prefix
(the small releases of tests/bundle/bundle_factory.py: a venv and a wheel, no appliance), models
bundles made by the real `airlock bundle build --models-only` code, and, for the attacks, bundles
signed by hand with whatever the attacker holds.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import sysconfig
from dataclasses import dataclass
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE / "bundle"))

from bundle_factory import NOW, Keys, envelope, kid, make_bundle, tar_into_parts  # noqa: E402

from airlock.bundle import manifest as bm  # noqa: E402
from airlock.bundle.build import BuildRequest, build  # noqa: E402
from airlock.bundle.install import install  # noqa: E402
from airlock.bundle.payload import file_entries, sha256_file  # noqa: E402
from airlock.config import REPO_ROOT  # noqa: E402
from airlock.trust.ceremony import init_root  # noqa: E402
from airlock.trust.keyfiles import load_signing_key  # noqa: E402
from airlock.trust.root import canonical_json  # noqa: E402

PASSPHRASE = b"the models bundle test root"
SRC = Path(__file__).resolve().parents[1] / "src"


@dataclass
class Site:
    ceremony: Path
    keys: Keys
    root: dict
    prefix: Path

    @property
    def fingerprint(self) -> str:
        return kid(self.keys.root[0])


def new_site(tmp: Path) -> Site:
    """A trust root (the ceremony's code, keys in files) and an empty prefix."""
    made = init_root(tmp / "ceremony", root_keys=1, threshold=1, demo=True, passphrase=lambda _p: PASSPHRASE,
                     now=NOW)
    keys = Keys(**{role: [load_signing_key(path, lambda _p: PASSPHRASE) for path in paths]
                   for role, paths in made.key_files.items()})
    return Site(tmp / "ceremony", keys, made.root.document, tmp / "opt")


def install_release(site: Site, out: Path, sequence: int) -> dict:
    """A release of the site installed into its prefix (its health checks are the appliance's, not this
    one's), with this checkout's airlock put into its venv as its wheel would put it: the package in
    the venv's site-packages, far from any checkout."""
    make_bundle(out, site.keys, sequence=sequence, root=site.root)
    state = install(out, site.prefix, now=NOW, fingerprint=site.fingerprint, health=False)
    venv = site.prefix / "releases" / state["current"] / "venv"
    (site_packages,) = venv.glob("lib/python3*/site-packages")
    shutil.copytree(SRC / "airlock", site_packages / "airlock", ignore=shutil.ignore_patterns("__pycache__", "vendor"))
    return state


def small_model(models_dir: Path, name: str, seed: bytes = b"w") -> Path:
    """A model folder as a models bundle carries it (config, tokenizer, safetensors weights)."""
    folder = models_dir / name
    folder.mkdir(parents=True)
    (folder / "config.json").write_text('{"model_type": "llama", "architectures": ["LlamaForCausalLM"]}')
    (folder / "tokenizer.json").write_text('{"model": {}}')
    (folder / "model.safetensors").write_bytes(seed * 50_000)
    return folder


def build_models_bundle(site: Site, models_dir: Path, names: list[str], out: Path, *, sequence: int) -> dict:
    """`airlock bundle build --models-only`, the real code, signed with the site's bundle key."""
    return build(BuildRequest(target="any", out=out, root=site.ceremony / "root.json",
                              keys=[site.ceremony / "keys" / "bundle-1.key"], passphrase=lambda _p: PASSPHRASE,
                              repo=REPO_ROOT, models_dir=models_dir, part_size=1 << 20, models=names,
                              sequence=sequence, models_only=True, now=NOW))["manifest"]


def forge_models_bundle(site: Site, tree: Path, out: Path, *, sequence: int, signers: list,
                        rename: dict[str, str] | None = None) -> dict:
    """A models bundle of whatever `tree` holds, signed by `signers`: what an attacker with those keys
    (or a poisoned models folder on the build host) would hand over. `rename` changes paths in the
    signed file list only, as a hand-written manifest would."""
    files = file_entries(tree)
    out.mkdir(parents=True)
    parts = tar_into_parts(tree, files, out, 1 << 20)
    (out / bm.ROOT_NAME).write_bytes(canonical_json(site.root))
    outside = {bm.ROOT_NAME: {"size": (out / bm.ROOT_NAME).stat().st_size, "sha256": sha256_file(out / bm.ROOT_NAME)}}
    listed = {(rename or {}).get(path, path): entry for path, entry in files.items()}
    manifest = {"kind": bm.MODELS_KIND, "name": "airlock", "version": "0.1.0", "sequence": sequence,
                "created": bm.utc_text(NOW), "expires": "2027-01-01T00:00:00Z", "target": dict(bm.ANY_TARGET),
                "parts": parts, "files": listed, "outside": outside, "contents": {"models": [], "wheels": 0,
                                                                                   "images": []}}
    payload = canonical_json(manifest)
    (out / bm.MANIFEST_NAME).write_bytes(payload)
    (out / bm.ENVELOPE_NAME).write_bytes(canonical_json(envelope(payload, signers)))
    return manifest


def release_python(prefix: Path) -> list[str]:
    """The current release's own interpreter (sys.prefix: PREFIX/releases/NAME/venv): its airlock, and
    the test environment's libraries (the small releases carry none)."""
    return [str(prefix / "current" / "venv" / "bin" / "python")]


def release_env(extra: dict[str, str]) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith(("AIRLOCK_", "VIRTUAL_ENV", "PYTHON"))}
    # The test environment's libraries only: its airlock is an editable install (a .pth file, which
    # a PYTHONPATH entry does not run), so the release's own copy is the one imported.
    env["PYTHONPATH"] = sysconfig.get_paths()["purelib"]
    return {**env, **extra}


def run_release(prefix: Path, code: str, cwd: Path, **env: str) -> subprocess.CompletedProcess:
    return subprocess.run([*release_python(prefix), "-c", code], cwd=cwd, env=release_env(env), capture_output=True,
                          text=True, timeout=300, check=False)


def clean(path: Path) -> None:
    shutil.rmtree(path, ignore_errors=True)

"""Benchmark 8: installing the CPU bundle with no network, and the size of each bundle's parts.

Two CPU bundles are built from this checkout under a throw-away demo root, one venv-only
(`--no-images`) and one with the service images, then each is installed into a fresh prefix inside
a network namespace with loopback only (`unshare -n`): verify, unpack, the venv from the bundle's
wheels, the images loaded into podman (where it is installed), the health checks, the switch.
Timed whole, as an operator waits for it. The baseline is copying the same bundle folder (`cp -r`), the floor of any install
that reads every byte once. The CUDA target is listed from its lock (sizes from the index), not
downloaded.
"""

from __future__ import annotations

import os
import subprocess
import tempfile
import time
from pathlib import Path

from airlock.bundle.build import BuildRequest, build
from airlock.bundle.parts import human_bytes
from airlock.bundle.wheels import dry_run
from airlock.config import REPO_ROOT, get_settings
from airlock.trust.ceremony import init_root
from bench.report import Section

TARGET_S = 300
PART_SIZE = 700 << 20  # a CD-sized part, to show the split
PASSPHRASE = b"benchmark root, thrown away after the run"


def _timed(cmd: list[str], **kw) -> float:
    start = time.perf_counter()
    done = subprocess.run(cmd, capture_output=True, text=True, **kw)
    if done.returncode != 0:
        raise RuntimeError(f"{' '.join(cmd[:4])}... failed: {(done.stderr or done.stdout)[-2000:]}")
    return time.perf_counter() - start


def _build_and_install(base: Path, ceremony, *, images: bool) -> dict:
    name = "bundle-images" if images else "bundle"
    t0 = time.perf_counter()
    result = build(BuildRequest(target="cpu", out=base / name, root=ceremony.root_path,
                                keys=ceremony.key_files["bundle"], passphrase=lambda _p: PASSPHRASE,
                                repo=REPO_ROOT, models_dir=get_settings().models_dir, part_size=PART_SIZE,
                                images=images))
    build_s = time.perf_counter() - t0
    bundle = base / name
    copy_s = _timed(["cp", "-r", str(bundle), str(base / f"{name}-copy")])
    subprocess.run(["rm", "-rf", str(base / f"{name}-copy")], check=True)
    env = {k: v for k, v in os.environ.items() if not k.startswith(("AIRLOCK_", "PIP_", "VIRTUAL_ENV"))}
    install_s = _timed(["unshare", "-n", str(bundle / "install.sh"), "--offline", str(bundle),
                        "--prefix", str(base / f"opt-{name}"), "--fingerprint", ceremony.root.roles["root"].keyids[0]],
                       env=env, timeout=1800)
    manifest = result["manifest"]
    tags = [image["tag"] for image in manifest["contents"]["images"]]
    if tags:  # a benchmark leaves no images behind in this host's podman
        subprocess.run(["podman", "rmi", "--force", "--ignore", *tags], capture_output=True, check=False)
    return {"build_s": build_s, "copy_s": copy_s, "install_s": install_s, "manifest": manifest}


def run(quick: bool) -> Section:
    started, load0 = time.perf_counter(), os.getloadavg()[0]
    section = Section(
        title="8. Offline install of the CPU bundle",
        what=("CPU bundles (the reference model) built from this checkout, venv-only (`--no-images`) and with the "
              "service images, each installed with `install.sh --offline` into a fresh prefix inside `unshare -n` "
              "(loopback only): verification, unpacking, the venv from the bundle's wheels (no index, hashes "
              "required), the images loaded into podman, health checks, the switch. Baseline: `cp -r` of the same "
              "bundle folder. Target: at most 5 minutes."))
    runs = {}
    with tempfile.TemporaryDirectory(prefix="airlock-bench-offline-") as tmp:
        base = Path(tmp)
        ceremony = init_root(base / "ceremony", root_keys=1, threshold=1, demo=True, passphrase=lambda _p: PASSPHRASE)
        for images in (False, True):
            runs[images] = _build_and_install(base, ceremony, images=images)
    rows = []
    for images, label in ((False, "venv only"), (True, "with images")):
        r = runs[images]
        section.add(f"offline install, CPU bundle {label}", f"{r['copy_s']:.1f} s (cp -r of the bundle)",
                    f"{r['install_s']:.0f} s", f"{r['install_s'] / r['copy_s']:.1f}", f"<= {TARGET_S} s",
                    r["install_s"] <= TARGET_S)
        rows += [[f"cpu, {label}", p["name"], human_bytes(p["size"])] for p in r["manifest"]["parts"]]
        files = r["manifest"]["files"]
        section.notes.append(f"Building the CPU bundle {label} took {r['build_s']:.0f} s here (its "
                             f"{r['manifest']['contents']['wheels']} wheels downloaded or found in pip's cache"
                             f"{', the images built on a cached base' if images else ''}); payload "
                             f"{human_bytes(sum(f['size'] for f in files.values()))} in {len(files)} files.")
    images = {path: entry["size"] for path, entry in runs[True]["manifest"]["files"].items() if path.startswith("images/")}
    section.details.append(("Service images (OCI archives)", ("file", "size"),
                            [[path, human_bytes(size)] for path, size in sorted(images.items())]))
    if not quick:
        cuda = dry_run(REPO_ROOT / "wheels" / "requirements-cuda.lock", "cuda")
        total = sum(w["size"] or 0 for w in cuda)
        rows.append(["cuda (wheels from its lock, not built)", f"{len(cuda)} wheels; {-(-total // PART_SIZE)} parts "
                     f"of {human_bytes(PART_SIZE)}", human_bytes(total)])
    section.details.insert(0, ("Parts per target", ("target", "part", "size"), rows))
    section.seconds, section.load = time.perf_counter() - started, (load0, os.getloadavg()[0])
    return section

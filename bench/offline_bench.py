"""Benchmark 8: installing the CPU bundle with no network, and the size of each bundle's parts.

A CPU bundle (no images) is built from this checkout under a throw-away demo root, then installed
into a fresh prefix inside a network namespace with loopback only (`unshare -n`): verify, unpack,
the venv from the bundle's wheels, the health checks, the switch. Timed whole, as an operator
waits for it. The baseline is copying the same bundle folder (`cp -r`), the floor of any install
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


def run(quick: bool) -> Section:
    started, load0 = time.perf_counter(), os.getloadavg()[0]
    section = Section(
        title="8. Offline install of the CPU bundle",
        what=("A CPU bundle (no images, the reference model) built from this checkout, installed with "
              "`install.sh --offline` into a fresh prefix inside `unshare -n` (loopback only): verification, "
              "unpacking, the venv from the bundle's wheels (no index, hashes required), health checks, the "
              "switch. Baseline: `cp -r` of the same bundle folder. Target: at most 5 minutes."))
    with tempfile.TemporaryDirectory(prefix="airlock-bench-offline-") as tmp:
        base = Path(tmp)
        ceremony = init_root(base / "ceremony", root_keys=1, threshold=1, demo=True, passphrase=lambda _p: PASSPHRASE)
        t0 = time.perf_counter()
        result = build(BuildRequest(target="cpu", out=base / "bundle", root=ceremony.root_path,
                                    keys=ceremony.key_files["bundle"], passphrase=lambda _p: PASSPHRASE,
                                    repo=REPO_ROOT, models_dir=get_settings().models_dir, part_size=PART_SIZE,
                                    images=False))
        build_s = time.perf_counter() - t0
        bundle = base / "bundle"
        copy_s = _timed(["cp", "-r", str(bundle), str(base / "copy")])
        fingerprint = ceremony.root.roles["root"].keyids[0]
        env = {k: v for k, v in os.environ.items() if not k.startswith(("AIRLOCK_", "PIP_", "VIRTUAL_ENV"))}
        install_s = _timed(["unshare", "-n", str(bundle / "install.sh"), "--offline", str(bundle),
                            "--prefix", str(base / "opt"), "--fingerprint", fingerprint], env=env, timeout=1800)
        manifest = result["manifest"]
    section.add("offline install, CPU bundle", f"{copy_s:.1f} s (cp -r of the bundle)", f"{install_s:.0f} s",
                f"{install_s / copy_s:.1f}", f"<= {TARGET_S} s", install_s <= TARGET_S)
    rows = [["cpu", p["name"], human_bytes(p["size"])] for p in manifest["parts"]]
    if not quick:
        cuda = dry_run(REPO_ROOT / "wheels" / "requirements-cuda.lock", "cuda")
        total = sum(w["size"] or 0 for w in cuda)
        rows.append(["cuda (from its lock, not built)", f"{len(cuda)} wheels; {-(-total // PART_SIZE)} parts of "
                     f"{human_bytes(PART_SIZE)}", human_bytes(total)])
    section.details.append(("Parts per target", ("target", "part", "size"), rows))
    section.notes.append(f"Building the CPU bundle took {build_s:.0f} s here (downloading its "
                         f"{manifest['contents']['wheels']} wheels included); payload "
                         f"{human_bytes(sum(f['size'] for f in manifest['files'].values()))} in "
                         f"{len(manifest['files'])} files.")
    section.seconds, section.load = time.perf_counter() - started, (load0, os.getloadavg()[0])
    return section

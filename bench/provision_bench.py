"""Benchmark 10: provisioning this machine in containers mode from a bundle, first and second run.

A CPU bundle with the service images is built from this checkout under a throw-away demo root (or
AIRLOCK_BENCH_BUNDLE=DIR:FINGERPRINT names one built before). In one network namespace with
loopback only:
- baseline: the bare offline install (`install.sh --offline` into a fresh prefix: verify, unpack,
  venv, images loaded, health checks), what provisioning cannot do without;
- the first provisioning: `ansible-playbook site.yml` against localhost from the unpacked bundle's
  playbooks into another fresh prefix: the same install, then the store, the engine, the worker and
  the gateway (TLS) as containers, until the gateway reports every service ready;
- the second run of the same play, which must report changed=0.
"""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
import tempfile
import time
import uuid
from datetime import UTC, datetime
from pathlib import Path

from airlock.bundle.build import BuildRequest, build
from airlock.bundle.check import unpack, verify_bundle
from airlock.config import REPO_ROOT, get_settings
from airlock.trust.ceremony import init_root
from bench.report import Section

PASSPHRASE = b"benchmark root, thrown away after the run"
SERVICES = ("store", "engine", "worker", "gateway")


def _bundle(base: Path) -> tuple[Path, str]:
    given = os.environ.get("AIRLOCK_BENCH_BUNDLE", "")
    if given:
        folder, _, fingerprint = given.rpartition(":")
        return Path(folder), fingerprint
    ceremony = init_root(base / "ceremony", root_keys=1, threshold=1, demo=True, passphrase=lambda _p: PASSPHRASE)
    build(BuildRequest(target="cpu", out=base / "bundle", root=ceremony.root_path, keys=ceremony.key_files["bundle"],
                       passphrase=lambda _p: PASSPHRASE, repo=REPO_ROOT, models_dir=get_settings().models_dir,
                       part_size=700 << 20, images=True))
    return base / "bundle", ceremony.root.roles["root"].keyids[0]


def _inventory(path: Path, bundle: Path, fingerprint: str, root: Path) -> Path:
    conf = os.environ.get("CONTAINERS_CONF", "")
    host = {"ansible_connection": "local", "ansible_python_interpreter": sys.executable, "ansible_become": False,
            "airlock_bundle_dir": str(bundle), "airlock_root_fingerprint": fingerprint, "airlock_bundle_copy": False,
            "airlock_prefix": str(root / "opt"), "airlock_home": str(root / "home"),
            "airlock_config_dir": str(root / "etc"), "airlock_store_data": str(root / "store"),
            "airlock_host_time_sync": "warn", "airlock_host_firewall": "none", "airlock_gateway_port": 18443,
            "airlock_store_port": 19000, "airlock_podman_env": {"CONTAINERS_CONF": conf} if conf else {}}
    groups = {g: {"hosts": {"appliance": None}} for g in ("gateways", "engines", "workers", "stores")}
    path.write_text(json.dumps({"all": {"vars": host, "children": groups}}))
    return path


def _timed(ns: str, argv: list[str], **kw) -> tuple[float, str]:
    start = time.perf_counter()
    done = subprocess.run(["nsenter", f"--net=/run/netns/{ns}", *argv], capture_output=True, text=True, **kw)
    if done.returncode != 0:
        raise RuntimeError(f"{' '.join(argv[:3])}... failed:\n{done.stdout[-3000:]}\n{done.stderr[-2000:]}")
    return time.perf_counter() - start, done.stdout


def run(quick: bool) -> Section:
    started, load0 = time.perf_counter(), os.getloadavg()[0]
    section = Section(
        title="10. Provisioning this machine in containers mode",
        what=("`ansible-playbook site.yml` from the unpacked CPU bundle (service images included) against localhost, "
              "inside a network namespace with loopback only: the first run (install, store, engine, worker, gateway "
              "over TLS, until the gateway reports every service ready) against the bare offline install of the same "
              "bundle (`install.sh --offline` into a fresh prefix) as baseline; the second run (no change) against "
              "the first."))
    ns = f"airlock-bench-{uuid.uuid4().hex[:8]}"
    bin_dir = Path(sys.executable).parent
    with tempfile.TemporaryDirectory(prefix="airlock-bench-provision-") as tmp:
        base = Path(tmp)
        bundle, fingerprint = _bundle(base)
        verified = verify_bundle(bundle, now=datetime.now(UTC), fingerprint=fingerprint)
        unpack(bundle, verified, base / "control")
        playbooks = base / "control" / "playbooks"
        env = dict(os.environ, ANSIBLE_CONFIG=str(playbooks / "ansible.cfg"), PATH=f"{bin_dir}:{os.environ['PATH']}")
        inventory = _inventory(base / "inventory.json", bundle, fingerprint, base / "host")
        subprocess.run(["ip", "netns", "add", ns], check=True)
        try:
            subprocess.run(["ip", "-n", ns, "link", "set", "lo", "up"], check=True)
            clean = {k: v for k, v in os.environ.items() if not k.startswith(("AIRLOCK_", "PIP_", "VIRTUAL_ENV"))}
            install_s, _ = _timed(ns, [str(bundle / "install.sh"), "--offline", str(bundle), "--prefix",
                                       str(base / "bare"), "--fingerprint", fingerprint], env=clean, timeout=1800)
            play = [str(bin_dir / "ansible-playbook"), "-i", str(inventory), str(playbooks / "site.yml")]
            first_s, _ = _timed(ns, play, env=env, timeout=2400)
            second_s, out = _timed(ns, play, env=env, timeout=1200)
            changed = int(re.search(r"^appliance\s+:.*changed=(\d+)", out, re.MULTILINE).group(1))
        finally:
            subprocess.run(["nsenter", f"--net=/run/netns/{ns}", "podman", "rm", "--force", "--time", "5",
                            *(f"airlock-{s}" for s in SERVICES)], capture_output=True, check=False)
            subprocess.run(["nsenter", f"--net=/run/netns/{ns}", "podman", "network", "rm", "--force", "airlock"],
                           capture_output=True, check=False)
            subprocess.run(["ip", "netns", "delete", ns], check=False)
    section.add("first provisioning of localhost, containers mode", f"{install_s:.0f} s (bare offline install)",
                f"{first_s:.0f} s", f"{first_s / install_s:.2f}", "(information)", None)
    section.add("second run of the same play", f"{first_s:.0f} s (the first run)", f"{second_s:.0f} s",
                f"{second_s / first_s:.2f}", "changed=0", changed == 0)
    section.notes.append(f"The second run reported changed={changed}. What the first run adds to the bare install: "
                         f"the store, the bucket, a generated certificate, four containers each waited for until "
                         f"healthy (vLLM's CPU start is most of it) and the gateway's /readyz: "
                         f"{first_s - install_s:.0f} s.")
    section.seconds, section.load = time.perf_counter() - started, (load0, os.getloadavg()[0])
    return section

"""The stand-alone verifier that travels beside a bundle: `python3 airlock-verify.pyz DIR ...`.

A first install has no airlock yet, so the bundle carries its own checker: a zipapp holding only
the standard-library modules airlock itself verifies and unpacks bundles with (check.py and what it
imports), run by the host's bare `python3`. It is one implementation, not a second one: the
installed airlock imports the very same modules. Its bytes are named in the signed manifest, and
docs/bundle.md shows how to check the manifest's signature by hand (openssl) before trusting it.
"""

from __future__ import annotations

import zipfile
from pathlib import Path

import airlock

NAME = "airlock-verify.pyz"
# Modules of the package that import only the standard library and each other (the zipapp test
# runs them under `python3 -I -S`, where nothing else can be imported).
MODULES = ("errors.py", "trust/ed25519.py", "trust/root.py", "trust/atomic.py", "trust/pinned.py",
           "bundle/manifest.py", "bundle/check.py", "bundle/parts.py", "bundle/extract.py", "bundle/target.py",
           "bundle/install.py", "bundle/pip_run.py", "bundle/podman_load.py",
           "bundle/offline_cli.py")
PACKAGES = ("", "trust", "bundle")
MAIN = "from airlock.bundle.offline_cli import main\n\nraise SystemExit(main())\n"
# A fixed timestamp makes two builds of the same sources byte-identical.
EPOCH = (1980, 1, 1, 0, 0, 0)


def build_verifier(out: Path) -> Path:
    """Write the zipapp to `out`: a shebang line, then a zip of the modules above."""
    src = Path(airlock.__file__).parent
    out.parent.mkdir(parents=True, exist_ok=True)
    with out.open("wb") as f:
        f.write(b"#!/usr/bin/env python3\n")
        with zipfile.ZipFile(f, "w", compression=zipfile.ZIP_DEFLATED) as zf:
            def add(name: str, data: bytes) -> None:
                info = zipfile.ZipInfo(name, date_time=EPOCH)
                info.external_attr = 0o644 << 16
                info.compress_type = zipfile.ZIP_DEFLATED
                zf.writestr(info, data)

            add("__main__.py", MAIN.encode())
            for package in PACKAGES:
                # Empty package markers: the real __init__ files import third-party code.
                add(f"airlock/{package}/__init__.py".replace("//", "/"), b"")
            for module in MODULES:
                add(f"airlock/{module}", (src / module).read_bytes())
    out.chmod(0o755)
    return out

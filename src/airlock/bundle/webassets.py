"""The web UI's chart library, uPlot, served by the appliance itself: taken from one hash-locked
wheel, never fetched by the appliance or by a browser from anywhere else.

`wheels/web.lock` pins `uplot-python` (`uplot-python==VERSION --hash=sha256:...`), a Python wrapper
whose wheel carries uPlot's built script and stylesheet; the wheel is never installed (it depends on
IPython). Vendoring checks the wheel against the lock and writes exactly those two files and the
wheel's license texts into `src/airlock/web/static/vendor/uplot/`, where the UI serves them from
`/static/vendor/uplot/` and from where airlock's own wheel carries them as package data, so a
bundle signs them with the rest of airlock. uPlot's own notice (MIT) is the header of its script,
copied byte for byte; the version and license the SBOM gives are read from that header.

    python -m airlock.bundle.webassets [--dest src/airlock/web/static/vendor/uplot] --cache DIR

Standard library only when vendoring, like `airlock.bundle.collections`.
"""

from __future__ import annotations

import hashlib
import re
import sys
import zipfile
from pathlib import Path

from airlock.bundle.locked_wheel import check_wheel, command_line, fetch, file_members, holds_exactly, write_members
from airlock.errors import IntegrityFailure, NotFound

LOCK = Path("wheels") / "web.lock"
VENDORED = Path("src") / "airlock" / "web" / "static" / "vendor" / "uplot"
SERVED_FROM = "/static/vendor/uplot/"  # the web UI mounts src/airlock/web/static at /static
PACKAGE_PATH = "airlock/web/static/vendor/uplot"  # where airlock's own wheel carries them
SCRIPT = "uplot/static/uPlot.iife.js"
STYLESHEET = "uplot/static/uPlot.min.css"
LICENSES = re.compile(r"^[^/]+\.dist-info/licenses/(.+)$")
# The script's header: "All rights reserved. (MIT Licensed)" and "https://.../leeoniya/uPlot (v1.6.16)".
HEADER = 1024
HEADER_LICENSE = re.compile(rb"\(([A-Za-z0-9.-]+) Licensed\)")
HEADER_VERSION = re.compile(rb"/uPlot \(v([0-9]+(?:\.[0-9]+)+)\)")


def _chosen(wheel: zipfile.ZipFile, source: Path) -> dict[str, zipfile.ZipInfo]:
    """What is written, by its name in the vendored folder: the script, the stylesheet and the
    wheel's license texts. Any unsafe member anywhere refuses the whole wheel."""
    files = file_members(wheel, source)
    missing = [member for member in (SCRIPT, STYLESHEET) if member not in files]
    if missing:
        raise NotFound(f"{source}: holds no {' and no '.join(missing)}")
    chosen = {Path(SCRIPT).name: files[SCRIPT], Path(STYLESHEET).name: files[STYLESHEET]}
    for path, info in files.items():
        match = LICENSES.match(path)
        if match and match.group(1) not in chosen:
            chosen[match.group(1)] = info
    if len(chosen) == 2:
        raise NotFound(f"{source}: holds no license text (*.dist-info/licenses/); uPlot would travel without it")
    return chosen


def _describe(wheel: zipfile.ZipFile, chosen: dict[str, zipfile.ZipInfo], source: dict, wheel_path: Path) -> dict:
    """What the SBOM names: uPlot's version and license from its script's header, each file's sha256."""
    header = wheel.read(chosen[Path(SCRIPT).name])[:HEADER]
    version, license_id = HEADER_VERSION.search(header), HEADER_LICENSE.search(header)
    if not version or not license_id:
        raise IntegrityFailure(f"{wheel_path}: {SCRIPT} does not open with uPlot's header "
                               "naming its version (`uPlot (vX.Y.Z)`) and license (`(MIT Licensed)`)")
    return {"name": "uplot", "version": version.group(1).decode(), "license": license_id.group(1).decode(),
            "path": PACKAGE_PATH, "served_from": SERVED_FROM,
            "files": {name: hashlib.sha256(wheel.read(info)).hexdigest() for name, info in sorted(chosen.items())},
            "source": source}


def vendor_web_assets(wheel_path: Path, dest: Path, *, lock_path: Path) -> tuple[dict, bool]:
    """`dest` holding exactly uPlot's script, stylesheet and license texts, taken from the wheel once
    its sha256 is the one `lock_path` locks; left as it is when it holds them already. (what is
    vendored, whether anything was written): {name, version, license, path, served_from,
    files: {name: sha256}, source: {name, version, sha256, file}}, either way, as an SBOM names it."""
    wheel_path, dest = Path(wheel_path), Path(dest)
    source = check_wheel(wheel_path, lock_path)
    with zipfile.ZipFile(wheel_path) as wheel:
        chosen = _chosen(wheel, wheel_path)
        done = _describe(wheel, chosen, source, wheel_path)
        if holds_exactly(dest, wheel, chosen):
            return done, False
        write_members(wheel, chosen, dest)
    return done, True


def vendored(wheel_path: Path, dest: Path) -> bool:
    """Whether `dest` holds exactly what vendoring would write, byte for byte."""
    with zipfile.ZipFile(wheel_path) as wheel:
        return holds_exactly(Path(dest), wheel, _chosen(wheel, Path(wheel_path)))


def vendor_locked(repo: Path, dest: Path, cache_dir: Path) -> tuple[dict, bool]:
    """The checkout's locked uPlot in `dest`, its wheel fetched into `cache_dir` when not cached."""
    lock_path = repo / LOCK
    return vendor_web_assets(fetch(lock_path, cache_dir), dest, lock_path=lock_path)


def _vendor_and_report(repo: Path, dest: Path, cache_dir: Path) -> list[str]:
    done, written = vendor_locked(repo, dest, cache_dir)
    state = f"({len(done['files'])} files) from {done['source']['file']}" if written else "up to date"
    return [f"{dest}: uPlot {done['version']} {state}"]


def main(argv: list[str] | None = None) -> int:
    return command_line(argv, prog="python -m airlock.bundle.webassets", default_dest=VENDORED,
                        description=f"Vendor the web UI's uPlot from the wheel {LOCK} locks.",
                        vendor=_vendor_and_report)


if __name__ == "__main__":
    sys.exit(main())
